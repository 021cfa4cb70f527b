"""The Fast DDS profile that keeps service answers from being dropped under load."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import pytest

from pump_rig.nodes import dds_profile

NS = {"dds": "http://www.eprosima.com"}


def test_installed_profile_gives_service_answers_time_to_find_the_caller() -> None:
    path = dds_profile.rig_dds_profile()
    assert path is not None, "config/fastdds.xml is not installed with pump_rig"
    root = ET.parse(path).getroot()
    writer = root.find("dds:profiles/dds:data_writer[@profile_name='service']", NS)
    assert writer is not None, "rmw_fastrtps reads the data_writer profile named 'service'"
    blocking = writer.find("dds:qos/dds:reliability/dds:max_blocking_time", NS)
    assert blocking is not None
    seconds = (
        int(blocking.findtext("dds:sec", "0", NS))
        + int(blocking.findtext("dds:nanosec", "0", NS)) / 1e9
    )
    assert seconds >= 1.0  # Fast DDS's 100 ms default is what dropped answers under load


def test_a_profile_the_user_set_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dds_profile.PROFILE_ENV, "/lab/profiles.xml")
    dds_profile.use_rig_dds_profile()
    assert os.environ[dds_profile.PROFILE_ENV] == "/lab/profiles.xml"


def test_other_middlewares_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dds_profile.PROFILE_ENV, raising=False)
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
    dds_profile.use_rig_dds_profile()
    assert dds_profile.PROFILE_ENV not in os.environ


def test_fast_dds_gets_the_rig_profile_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dds_profile.PROFILE_ENV, raising=False)
    monkeypatch.delenv("RMW_IMPLEMENTATION", raising=False)
    dds_profile.use_rig_dds_profile()
    assert os.environ[dds_profile.PROFILE_ENV] == str(dds_profile.rig_dds_profile())
