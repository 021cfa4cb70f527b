"""Typed errors raised by device transports and drivers (protocol-independent)."""

from __future__ import annotations


class DeviceError(Exception):
    """Anything that went wrong talking to a device."""


class DeviceTimeout(DeviceError):  # noqa: N818 - names fixed by the driver contract
    """No (valid) reply within the allowed time, after any retries."""


class DeviceProtocolError(DeviceError):
    """The device answered, but with frames that could not be trusted (corrupted, malformed)."""


class DeviceRejected(DeviceError):  # noqa: N818 - names fixed by the driver contract
    """The device understood the request and refused it with an error code."""

    def __init__(self, code: int, message: str, *, command: str | None = None) -> None:
        what = f"{command} " if command else ""
        super().__init__(f"device rejected {what}request: error {code}: {message}")
        self.code = int(code)
        self.message = message
        self.command = command


class DeviceDisconnected(DeviceError):  # noqa: N818 - names fixed by the driver contract
    """The port is missing or vanished (unplugged, powered off, wrong path)."""
