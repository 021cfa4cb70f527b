"""Serial faults on a device emulator's reply path: garbage, dropped, late and partial frames.

Both byte-level emulators (the open stepper pump, the New Era NE-1000) push every reply frame
through one ``ReplyFaults``: it drops, corrupts, cuts short or delays the frame while the
matching fault is active, and holds delayed bytes in a heap until they are due. It is
framing-aware only as far as faults need: it knows the bytes that end a frame (``"\\n"`` for
the stepper's lines, ETX for New Era packets), so a corrupted frame still ends like a frame
and junk "frames" look like frames to a receiver. Randomness comes from one seeded
``random.Random``: the same seed and the same traffic give the same faults.

Faults and what a host sees (``FaultKind``):

* ``SERIAL_DROP``: a reply is not sent (with ``drop_probability``).
* ``SERIAL_GARBAGE``: with ``partial_probability`` the reply is cut short (its first bytes
  only, no terminator: a *partial frame*, which glues onto whatever comes next); otherwise with
  ``garbage_probability`` 1-3 of its bytes are changed or inserted before the terminator;
  otherwise random noise is added around the intact reply (a junk frame before or after it, or
  noise glued in front of it).
* ``SERIAL_DELAY``: the (possibly corrupted) reply is sent ``delay_s`` later.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

from pump_rig.core.faults import FaultKind

SERIAL_BYTE_FAULTS = frozenset(
    {FaultKind.SERIAL_GARBAGE, FaultKind.SERIAL_DROP, FaultKind.SERIAL_DELAY}
)


@dataclass(frozen=True)
class SerialFaultConfig:
    """How strong the serial faults are while active.

    ``garbage_probability``: chance that a reply itself is corrupted under SERIAL_GARBAGE;
    otherwise noise is only added around the intact reply.
    ``partial_probability``: chance, under SERIAL_GARBAGE and checked first, that a reply is
    cut short instead (0 by default: the stepper's historical fault mix).
    """

    delay_s: float = 0.5
    drop_probability: float = 1.0
    garbage_probability: float = 0.5
    partial_probability: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.delay_s) and self.delay_s >= 0.0):
            raise ValueError(f"delay_s must be a finite number >= 0, got {self.delay_s!r}")
        for name in ("drop_probability", "garbage_probability", "partial_probability"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be within 0..1, got {value!r}")


class ReplyFaults:
    """The reply path of one emulated serial line, with injectable faults."""

    def __init__(
        self,
        *,
        terminator: bytes,
        seed: int = 0,
        config: SerialFaultConfig | None = None,
    ) -> None:
        if not terminator:
            raise ValueError("terminator must be at least one byte")
        self._terminator = bytes(terminator)
        self._rng = random.Random(seed)
        self._config = config or SerialFaultConfig()
        self._active: set[FaultKind] = set()
        self._delayed: list[tuple[float, int, bytes]] = []  # heap of (due_s, order, bytes)
        self._order = 0

    # ---- faults -----------------------------------------------------------------------------
    def set_fault(self, kind: FaultKind, active: bool) -> None:
        if kind not in SERIAL_BYTE_FAULTS:
            raise ValueError(
                f"{kind} is not a serial byte fault (UNPLUG belongs to the pty host, other "
                f"kinds to the bench model); serial byte faults: "
                f"{', '.join(sorted(k.value for k in SERIAL_BYTE_FAULTS))}"
            )
        if active:
            self._active.add(kind)
        else:
            self._active.discard(kind)

    def clear(self) -> None:
        self._active.clear()

    @property
    def active(self) -> frozenset[FaultKind]:
        return frozenset(self._active)

    @property
    def config(self) -> SerialFaultConfig:
        return self._config

    def set_config(self, config: SerialFaultConfig) -> None:
        self._config = config

    @property
    def pending(self) -> int:
        """Delayed replies not yet sent."""
        return len(self._delayed)

    def reset(self) -> None:
        """The link restarted: replies still in flight are lost."""
        self._delayed.clear()

    # ---- reply path -------------------------------------------------------------------------
    def transmit(self, frame: bytes, t_s: float) -> bytes:
        """The bytes to send now for ``frame`` (possibly none: dropped or delayed)."""
        config = self._config
        if FaultKind.SERIAL_DROP in self._active and self._rng.random() < config.drop_probability:
            return b""
        data = frame
        if FaultKind.SERIAL_GARBAGE in self._active:
            data = self._garble(frame)
        if FaultKind.SERIAL_DELAY in self._active:
            heapq.heappush(self._delayed, (t_s + config.delay_s, self._order, data))
            self._order += 1
            return b""
        return data

    def due(self, t_s: float) -> bytes:
        """Delayed bytes due at ``t_s``, in the order they were sent."""
        out = bytearray()
        while self._delayed and self._delayed[0][0] <= t_s:
            out += heapq.heappop(self._delayed)[2]
        return bytes(out)

    def _garble(self, frame: bytes) -> bytes:
        rng = self._rng
        config = self._config
        term = self._terminator
        # Only draw for partial frames when asked to: the stepper's fault sequence for a given
        # seed stays what its tests were written against.
        if config.partial_probability > 0.0 and rng.random() < config.partial_probability:
            return frame[: rng.randrange(1, len(frame))] if len(frame) > 1 else b""
        if rng.random() < config.garbage_probability:
            # Corrupt the frame itself: a few bytes changed or inserted before its terminator.
            body = bytearray(frame[: -len(term)] if frame.endswith(term) else frame)
            if not body:
                return frame
            for _ in range(rng.randint(1, 3)):
                position = rng.randrange(len(body))
                if rng.random() < 0.5:
                    body[position] = (body[position] + rng.randrange(1, 256)) % 256
                else:
                    body.insert(position, rng.randrange(256))
            return bytes(body) + term
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
        match rng.randrange(3):
            case 0:
                return noise + term + frame  # a junk frame before the reply
            case 1:
                return noise + frame  # noise glued in front of the reply
            case _:
                return frame + noise + term  # a junk frame after the reply


__all__ = ["SERIAL_BYTE_FAULTS", "ReplyFaults", "SerialFaultConfig"]


class EmulatesSerialFaults:
    """The fault controls every device emulator offers, over its ``ReplyFaults`` (``_faults``):
    mock_hardware and tests drive any backend's emulator through these."""

    _faults: ReplyFaults

    def set_fault(self, kind: FaultKind, active: bool) -> None:
        self._faults.set_fault(kind, active)

    def clear_faults(self) -> None:
        self._faults.clear()

    def set_fault_config(self, config: SerialFaultConfig) -> None:
        self._faults.set_config(config)

    @property
    def active_faults(self) -> frozenset[FaultKind]:
        return self._faults.active

    @property
    def fault_config(self) -> SerialFaultConfig:
        return self._faults.config

    @property
    def pending_replies(self) -> int:
        """Delayed replies not yet sent."""
        return self._faults.pending
