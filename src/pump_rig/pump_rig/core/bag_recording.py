"""A rosbag2 bag (MCAP storage) written from serialized CDR messages, with the rosbags library.

Messages arrive already serialized (raw subscriptions), so recording costs no deserialize /
serialize round trip. The bag carries full message definitions, so it opens with rosbags, the
ROS 2 ``ros2 bag`` tools and any MCAP reader, without pump_rig installed.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rosbags.interfaces import (
    Connection,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

_INFINITE = QosTime(sec=0x7FFFFFFF, nsec=0xFFFFFFFF)


class RecordingError(Exception):
    """The bag cannot be created or written."""


@dataclass(frozen=True)
class TopicQos:
    """The QoS a topic is offered with, stored in the bag so a replay offers the same."""

    depth: int
    reliable: bool = True
    transient_local: bool = False

    def to_rosbags(self) -> Qos:
        return Qos(
            history=QosHistory.KEEP_LAST,
            depth=self.depth,
            reliability=QosReliability.RELIABLE if self.reliable else QosReliability.BEST_EFFORT,
            durability=(
                QosDurability.TRANSIENT_LOCAL if self.transient_local else QosDurability.VOLATILE
            ),
            deadline=_INFINITE,
            lifespan=_INFINITE,
            liveliness=QosLiveliness.AUTOMATIC,
            liveliness_lease_duration=_INFINITE,
            avoid_ros_namespace_conventions=False,
        )


def build_typestore(interface_dirs: Iterable[tuple[str, Path]] = ()) -> Typestore:
    """ROS 2 Kilted standard types plus the ``.msg`` files of the given packages.

    ``interface_dirs`` holds ``(package_name, share_dir)`` pairs; ``share_dir/msg/*.msg`` are
    registered as ``package_name/msg/Name``.
    """
    typestore = get_typestore(Stores.ROS2_KILTED)
    for package, share_dir in interface_dirs:
        types = {}
        for msg_file in sorted((share_dir / "msg").glob("*.msg")):
            types.update(get_types_from_msg(msg_file.read_text(), f"{package}/msg/{msg_file.stem}"))
        typestore.register(types)
    return typestore


def next_split_path(path: Path) -> Path:
    """``run`` -> ``run_1`` -> ``run_2``: the next bag of a split recording."""
    match = re.fullmatch(r"(.*)_(\d+)", path.name)
    if match:
        return path.with_name(f"{match.group(1)}_{int(match.group(2)) + 1}")
    return path.with_name(f"{path.name}_1")


class BagRecording:
    """One open bag. Topics can be added at any time (as they are discovered)."""

    def __init__(self, path: Path, typestore: Typestore) -> None:
        if path.exists():
            raise RecordingError(f"bag {path} already exists; choose another name")
        if not path.parent.is_dir():
            try:
                path.parent.mkdir(parents=True)
            except OSError as exc:
                raise RecordingError(f"cannot create {path.parent}: {exc.strerror}") from exc
        self.path = path
        self._typestore = typestore
        self._writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        try:
            self._writer.open()
        except Exception as exc:
            raise RecordingError(f"cannot open bag {path}: {exc}") from exc
        self._connections: dict[str, Connection] = {}
        self.message_count = 0
        # Per topic, so a watcher (the recorder's diagnostics) can tell a topic that is
        # subscribed but has delivered nothing yet from one that is being written.
        self.topic_counts: Counter[str] = Counter()
        self.closed = False

    @property
    def topics(self) -> tuple[str, ...]:
        return tuple(self._connections)

    def add_topic(self, topic: str, type_name: str, qos: TopicQos) -> None:
        if topic in self._connections:
            return
        self._connections[topic] = self._writer.add_connection(
            topic,
            type_name,
            typestore=self._typestore,
            offered_qos_profiles=[qos.to_rosbags()],
        )

    def write(self, topic: str, timestamp_ns: int, cdr: bytes) -> None:
        if self.closed:
            return
        self._writer.write(self._connections[topic], timestamp_ns, cdr)
        self.message_count += 1
        self.topic_counts[topic] += 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()
