"""CRC-16 with the CCITT polynomial (0x1021, MSB first, no reflection, no final XOR).

Two members of the family are used on the rig's serial lines; they differ only in the
initial register value, so they share one table:

* ``crc16_ccitt_false`` (CRC-16/CCITT-FALSE, init 0xFFFF): the open stepper pump's line
  protocol (``hardware/open_syringe_pump_protocol.md``). Check value ("123456789"): 0x29B1.
* ``crc16_xmodem`` (CRC-16/XMODEM, init 0x0000): New Era pumps' Safe mode ("16 bit CCITT CRC
  of <transmitted data>, high byte, low byte"). The NE-1000 manual's own example packet
  ``(0x2)(0x8) SAF0 (0x55)(0x43)(0x3)`` pins the variant: "SAF0" gives 0x5543 with init 0,
  0xD183 with init 0xFFFF. Check value ("123456789"): 0x31C3.
"""

from __future__ import annotations

POLY = 0x1021
INIT_CCITT_FALSE = 0xFFFF
INIT_XMODEM = 0x0000


def _table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ POLY) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_TABLE = _table()


def crc16_ccitt(data: bytes, *, init: int) -> int:
    """CRC-16 over ``data`` with the CCITT polynomial, starting from ``init`` (0..0xFFFF)."""
    if isinstance(init, bool) or not isinstance(init, int) or not 0 <= init <= 0xFFFF:
        raise ValueError(f"init must be an int in 0..0xFFFF, got {init!r}")
    crc = init
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _TABLE[(crc >> 8) ^ byte]
    return crc


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (init 0xFFFF): the open stepper pump's frames."""
    return crc16_ccitt(data, init=INIT_CCITT_FALSE)


def crc16_xmodem(data: bytes) -> int:
    """CRC-16/XMODEM (init 0x0000): New Era Safe mode packets."""
    return crc16_ccitt(data, init=INIT_XMODEM)


__all__ = ["crc16_ccitt", "crc16_ccitt_false", "crc16_xmodem"]
