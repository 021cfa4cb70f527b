"""The fixed topic contract of DESIGN.md: names (relative to the rig namespace), types and QoS.

QoS is chosen per topic on purpose: commands and states are reliable streams (a lost STOP is not
acceptable), pressure keeps a deeper queue so a slow monitor sees every sample, and alarms, dose
and estop are transient-local so a node that starts late (or restarts) learns the current
emergency-stop and alarm state immediately.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.event_handler import PublisherEventCallbacks, SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription


def _reliable(depth: int, latched: bool = False) -> QoSProfile:
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=depth,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE,
    )


QOS_COMMAND = _reliable(10)
QOS_STATE = _reliable(10)
QOS_PRESSURE = _reliable(100)
QOS_OCCLUSION = _reliable(10)
QOS_ALARMS = _reliable(100, latched=True)
QOS_DOSE = _reliable(1, latched=True)
QOS_ESTOP = _reliable(1, latched=True)
QOS_FAULTS = _reliable(20, latched=True)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    type_name: str  # ROS 2 interface name, e.g. "pump_rig_interfaces/msg/PumpState"
    qos: QoSProfile


RIG_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("pump/command", "pump_rig_interfaces/msg/PumpCommand", QOS_COMMAND),
    TopicSpec("pump/state", "pump_rig_interfaces/msg/PumpState", QOS_STATE),
    TopicSpec("pressure", "sensor_msgs/msg/FluidPressure", QOS_PRESSURE),
    TopicSpec("occlusion", "pump_rig_interfaces/msg/OcclusionStatus", QOS_OCCLUSION),
    TopicSpec("alarms", "pump_rig_interfaces/msg/Alarm", QOS_ALARMS),
    TopicSpec("dose", "pump_rig_interfaces/msg/DoseStatus", QOS_DOSE),
    TopicSpec("estop", "pump_rig_interfaces/msg/EmergencyStop", QOS_ESTOP),
    # Mock bench only: faults injected, so a recording shows when each began.
    TopicSpec("bench/faults", "pump_rig_interfaces/msg/FaultEvent", QOS_FAULTS),
)
TOPICS_BY_NAME = {spec.name: spec for spec in RIG_TOPICS}


# rclpy attaches incompatible-QoS event handlers to every publisher and subscription by default;
# each is a waitable the executor re-adds to its wait set on every wake-up, which dominated the
# CPU of accelerated runs. The rig's QoS is fixed by this contract, so nodes go without them.
NO_PUB_EVENTS = PublisherEventCallbacks(use_default_callbacks=False)
NO_SUB_EVENTS = SubscriptionEventCallbacks(use_default_callbacks=False)


def message_class(type_name: str) -> Any:
    """``pkg/msg/Name`` -> the Python message class."""
    package, kind, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


def rig_publisher(node: Node, topic: str) -> Publisher[Any]:
    """A publisher on a rig topic with the contract's type and QoS, so no node can drift."""
    spec = TOPICS_BY_NAME[topic]
    return node.create_publisher(
        message_class(spec.type_name), topic, spec.qos, event_callbacks=NO_PUB_EVENTS
    )


def rig_subscription(
    node: Node, topic: str, callback: Callable[[Any], None], name: str | None = None
) -> Subscription[Any]:
    """A subscription to a rig topic with the contract's type and QoS.

    ``name`` overrides the topic name (tools outside the rig pass the namespaced one).
    """
    spec = TOPICS_BY_NAME[topic]
    return node.create_subscription(
        message_class(spec.type_name),
        name or topic,
        callback,
        spec.qos,
        event_callbacks=NO_SUB_EVENTS,
    )


def diagnostics_publisher(node: Node) -> Publisher[Any]:
    return node.create_publisher(DiagnosticArray, "/diagnostics", 10, event_callbacks=NO_PUB_EVENTS)
