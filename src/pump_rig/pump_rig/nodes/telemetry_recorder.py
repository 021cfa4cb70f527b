"""telemetry_recorder: records the rig topics to a rosbag2 bag (MCAP) from raw subscriptions.

Topics are subscribed as soon as a publisher for them shows up in the graph (the type comes
from the graph), so the recorder may start before or after the rest of the stack. Services
``split`` (close this bag, continue in a new one) and ``stop``. The bag is closed cleanly on
shutdown, SIGINT or SIGTERM.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_srvs.srv import Trigger

from pump_rig.core.bag_recording import (
    BagRecording,
    RecordingError,
    TopicQos,
    build_typestore,
    next_split_path,
)
from pump_rig.nodes.contract import (
    NO_SUB_EVENTS,
    RIG_TOPICS,
    TOPICS_BY_NAME,
    diagnostics_publisher,
    message_class,
)
from pump_rig.nodes.params import ParamSet, ParamSpec, positive
from pump_rig.nodes.ros_time import clock_valid, wall_clock

DEFAULT_TOPICS = [spec.name for spec in RIG_TOPICS] + ["/diagnostics"]


def default_bag_path(output_dir: str) -> Path:
    return Path(output_dir) / time.strftime("rig_%Y%m%d_%H%M%S")


class TelemetryRecorder(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("telemetry_recorder", **kwargs)
        self.params = ParamSet(
            self,
            [
                ParamSpec(
                    "output_dir", "runs", "Directory new bags are created in", read_only=True
                ),
                ParamSpec(
                    "bag_path",
                    "",
                    "Bag directory to create ('' = output_dir/rig_<time>)",
                    read_only=True,
                ),
                ParamSpec(
                    "topics",
                    DEFAULT_TOPICS,
                    "Topics to record; relative names resolve in the node's namespace",
                    read_only=True,
                ),
                ParamSpec(
                    "discovery_period_s",
                    0.5,
                    "How often the graph is checked for the topics' publishers (wall time)",
                    0.05,
                    10.0,
                    read_only=True,
                    validator=positive,
                ),
            ],
        )
        interface_dirs = []
        for package in ("pump_rig_interfaces",):
            try:
                interface_dirs.append((package, Path(get_package_share_directory(package))))
            except PackageNotFoundError:
                self.get_logger().warning(f"{package} not found: its topics cannot be recorded")
        self._typestore = build_typestore(interface_dirs)
        path_param = str(self.params.get("bag_path"))
        path = (
            Path(path_param) if path_param else default_bag_path(str(self.params.get("output_dir")))
        )
        self._bag: BagRecording | None = BagRecording(path, self._typestore)
        self._wanted = {self.resolve_topic_name(t): t for t in self.params.get("topics")}
        self._subscribed: dict[str, tuple[str, TopicQos]] = {}
        self._recording_subs: list[Any] = []
        self._early: list[tuple[str, bytes]] = []
        self._diag_pub = diagnostics_publisher(self)
        self.create_service(Trigger, "~/split", self._on_split)
        self.create_service(Trigger, "~/stop", self._on_stop)
        # Discovery runs on wall time: with simulated time the clock may not move yet.
        self.create_timer(
            float(self.params.get("discovery_period_s")), self._discover, clock=wall_clock()
        )
        self.create_timer(1.0, self._publish_diagnostics, clock=wall_clock())
        self._discover()
        self.get_logger().info(f"recording to {path}")

    @property
    def message_count(self) -> int:
        return self._bag.message_count if self._bag else 0

    def _discover(self) -> None:
        if self._bag is None:
            return
        graph = dict(self.get_topic_names_and_types())
        for resolved, given in self._wanted.items():
            if resolved in self._subscribed or resolved not in graph:
                continue
            type_name = graph[resolved][0]
            qos = self._topic_qos(given, resolved)
            try:
                msg_class = message_class(type_name)
                self._bag.add_topic(resolved, type_name, qos)
            except Exception as exc:  # an unknown type must not stop the other topics
                self.get_logger().error(f"cannot record {resolved} ({type_name}): {exc}")
                self._subscribed[resolved] = (type_name, qos)
                continue
            sub_qos = QoSProfile(
                depth=max(qos.depth, 100),
                reliability=ReliabilityPolicy.RELIABLE,
                durability=(
                    DurabilityPolicy.TRANSIENT_LOCAL
                    if qos.transient_local
                    else DurabilityPolicy.VOLATILE
                ),
            )
            self._recording_subs.append(
                self.create_subscription(
                    msg_class,
                    resolved,
                    self._writer_for(resolved),
                    sub_qos,
                    raw=True,
                    event_callbacks=NO_SUB_EVENTS,
                )
            )
            self._subscribed[resolved] = (type_name, qos)
            self.get_logger().info(f"recording {resolved} [{type_name}]")

    def _topic_qos(self, given: str, resolved: str) -> TopicQos:
        spec = TOPICS_BY_NAME.get(given.lstrip("/")) or TOPICS_BY_NAME.get(
            resolved.removeprefix(self.get_namespace().rstrip("/") + "/")
        )
        if spec is None:
            return TopicQos(depth=100)
        return TopicQos(
            depth=spec.qos.depth,
            reliable=spec.qos.reliability == ReliabilityPolicy.RELIABLE,
            transient_local=spec.qos.durability == DurabilityPolicy.TRANSIENT_LOCAL,
        )

    def _writer_for(self, topic: str) -> Any:
        def write(cdr: bytes) -> None:
            if self._bag is None:
                return
            if not clock_valid(self):
                # Latched messages can arrive before the first /clock: keep them until there
                # is a time to file them under, rather than at the epoch.
                self._early.append((topic, cdr))
                return
            t_ns = self.get_clock().now().nanoseconds
            for early_topic, early_cdr in self._early:
                self._bag.write(early_topic, t_ns, early_cdr)
            self._early.clear()
            self._bag.write(topic, t_ns, cdr)

        return write

    def _on_split(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._bag is None:
            response.success, response.message = False, "not recording (stopped)"
            return response
        old = self._bag
        try:
            new = BagRecording(next_split_path(old.path), self._typestore)
        except RecordingError as exc:
            response.success, response.message = False, str(exc)
            return response
        for topic, (type_name, qos) in self._subscribed.items():
            if topic in old.topics:
                new.add_topic(topic, type_name, qos)
        self._bag = new
        old.close()
        response.success, response.message = True, f"closed {old.path}; recording to {new.path}"
        return response

    def _on_stop(self, _request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self._bag is None:
            response.success, response.message = False, "not recording"
            return response
        path = self._bag.path
        self.close()
        response.success, response.message = True, f"closed {path}"
        return response

    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(
            level=DiagnosticStatus.OK if self._bag else DiagnosticStatus.WARN,
            name=f"{self.get_fully_qualified_name()}: recording",
            message=f"recording to {self._bag.path}" if self._bag else "stopped",
            hardware_id="telemetry",
            values=[
                KeyValue(key="messages", value=str(self.message_count)),
                KeyValue(key="topics", value=",".join(sorted(self._subscribed))),
                *(
                    KeyValue(key=f"messages {topic}", value=str(self._bag.topic_counts[topic]))
                    for topic in sorted(self._subscribed)
                    if self._bag is not None
                ),
            ],
        )
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)

    def close(self) -> None:
        """Flush and close the bag; safe to call more than once."""
        if self._bag is not None:
            bag, self._bag = self._bag, None
            bag.close()
            self.get_logger().info(f"closed {bag.path} ({bag.message_count} messages)")


def main(args: list[str] | None = None) -> None:
    from pump_rig.nodes.runner import run_node

    run_node(TelemetryRecorder, args)


if __name__ == "__main__":
    main()
