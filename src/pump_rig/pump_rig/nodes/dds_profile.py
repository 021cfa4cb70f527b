"""The rig's Fast DDS profile (config/fastdds.xml): why it exists is written in the file."""

from __future__ import annotations

import os
from pathlib import Path

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"


def rig_dds_profile() -> Path | None:
    """The installed profile file, or None when pump_rig is not installed."""
    try:
        share = Path(get_package_share_directory("pump_rig"))
    except PackageNotFoundError:
        return None
    path = share / "config" / "fastdds.xml"
    return path if path.is_file() else None


def use_rig_dds_profile() -> None:
    """Point Fast DDS at the rig's profile; call before ``rclpy.init``.

    A profile file the user already set wins, and other middlewares are left alone.
    """
    if PROFILE_ENV in os.environ:
        return
    if os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return
    path = rig_dds_profile()
    if path is not None:
        os.environ[PROFILE_ENV] = str(path)
