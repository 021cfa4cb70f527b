"""``pumprig journal show|verify|reset``: a rig's dose journal, read on disk (no rig needed).

``show`` and ``verify`` only read (a running rig may hold the journal meanwhile); ``reset``
refuses while a controller holds it and keeps the journal as a dated copy, never deleting it.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from pump_rig.core.dose_journal import DoseJournal, JournalError, archive
from pump_rig.core.program import default_drug_library
from pump_rig.core.rig_files import (
    OwnerLock,
    default_journal_path,
    describe_holder,
    ros_domain_id,
)
from pump_rig.core.therapy_engine import TherapyEngine


class JournalCommandError(Exception):
    """One line for the user: what is wrong with the journal or the request."""


def journal_path(namespace: str, given: Path | None) -> Path:
    """The journal a command works on: ``--file``, else the rig's default in this domain."""
    return given if given is not None else default_journal_path(namespace, ros_domain_id())


def _when(t_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t_s))


def _holder_line(path: Path) -> str:
    holder = OwnerLock.holder(path)
    return f"in use by {describe_holder(holder)}" if holder is not None else "not in use"


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        return DoseJournal.read(path)
    except JournalError as exc:
        raise JournalCommandError(str(exc)) from None


def show_lines(path: Path) -> list[str]:
    records = _read(path)
    header, body = records[0], records[1:]
    kinds = Counter(str(r.get("k")) for r in body)
    times = [float(r["s"]["t"]) for r in body if isinstance(r.get("s"), dict) and "t" in r["s"]]
    lines = [
        f"journal        {path}",
        f"id             {header['id']} (created {_when(float(header['t']))})",
        f"records        {len(body)}"
        + (f": {', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}" if body else ""),
        f"held           {_holder_line(path)}",
    ]
    if not times:
        return [*lines, "ledger         empty"]
    last_t = max(times)
    try:
        engine = TherapyEngine.replay(body, t_s=last_t, library=default_drug_library())
        snap = engine.snapshot(last_t)
    except Exception as exc:  # a journal written with another drug library or version
        return [*lines, f"last record    {_when(last_t)}", f"replay         not possible: {exc}"]
    lines += [
        f"last record    {_when(last_t)}",
        f"program        {snap.program or 'none'}"
        + (f" ({snap.drug} {snap.concentration_ug_per_ml:g} µg/mL)" if snap.program else ""),
        f"therapy then   {snap.therapy_state.name}: {snap.detail}",
        f"delivered      {snap.delivered_volume_ul:.3f} µL, {snap.delivered_dose_total_ug:.3f} µg "
        f"in all; {snap.delivered_dose_24h_ug:.3f} µg in the 24 h to the last record",
        f"reservoir      {snap.reservoir_volume_ul:.1f} µL",
    ]
    return lines


def verify_line(path: Path) -> str:
    records = _read(path)
    return (
        f"{path}: intact ({len(records) - 1} records, checksums, numbering, id and high-water "
        "mark agree)"
    )


def reset_line(path: Path) -> str:
    holder = OwnerLock.holder(path)
    if holder is not None:
        raise JournalCommandError(
            f"{path} is in use by {describe_holder(holder)}: stop that rig before resetting"
        )
    lock = OwnerLock.acquire(path, f"dose journal {path}", {"command": "pumprig journal reset"})
    try:
        kept = archive(path)
    finally:
        lock.release()
    if kept is None:
        raise JournalCommandError(f"{path}: no journal there (nothing to reset)")
    return f"kept as {kept} (with its .id and .hwm); the next start begins a new ledger"
