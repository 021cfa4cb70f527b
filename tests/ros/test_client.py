"""RigClient, the CLI's view of a running rig, against the real stack."""

from __future__ import annotations

from typing import Any

import pytest

from pump_rig.cli.client import RigClient
from tests.ros.conftest import PROGRAM, Probe, last

pytestmark = pytest.mark.ros


def test_latest_follows_a_changing_topic_across_calls(make_stack: Any, probe: Probe) -> None:
    make_stack(speed=600.0, program=PROGRAM)
    client = RigClient(probe.namespace)
    try:
        first = client.latest("dose")
        assert first is not None
        dose = probe.watch("dose")
        probe.wait_for(
            lambda: (
                (d := last(dose)) is not None
                and d.delivered_volume_ul > first.delivered_volume_ul + 1.0
            ),
            what="1 µL more accounted",
        )
        # The same client, asked again, reports the newer status, not the one it saw first.
        again = client.latest("dose")
        assert again is not None
        assert again.delivered_volume_ul > first.delivered_volume_ul + 1.0
    finally:
        client.close()


def test_latest_on_a_topic_nobody_publishes_gives_up_within_the_discovery_window(
    probe: Probe,
) -> None:
    client = RigClient(probe.namespace, discovery_timeout_s=1.0)
    try:
        assert client.latest("dose") is None
        assert client.collect("alarms", 0.1) == []
    finally:
        client.close()
