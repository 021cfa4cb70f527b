"""Reconnect pacing."""

from __future__ import annotations

import pytest

from pump_rig.core.backoff import Backoff


def test_delays_double_up_to_the_maximum_and_reset_on_success() -> None:
    backoff = Backoff(1.0, 5.0)
    assert backoff.due(0.0)
    assert [backoff.failed(0.0) for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert not backoff.due(4.9)
    assert backoff.due(5.0)
    backoff.reset()
    assert backoff.due(0.0) and backoff.failures == 0
    assert backoff.failed(10.0) == 1.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="initial_s"):
        Backoff(0.0, 1.0)
    with pytest.raises(ValueError, match="max_s"):
        Backoff(2.0, 1.0)
