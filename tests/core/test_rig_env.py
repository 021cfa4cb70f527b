"""tools/rig-env refuses, in one line saying what to do, a workspace whose set-up did not
finish (before, a set-up interrupted during the build made it print "not found:
.../local_setup.bash" and exit 127)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _workspace(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "tools").mkdir(parents=True)
    shutil.copy(REPO / "tools" / "rig-env", root / "tools" / "rig-env")
    return root


def _run(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "tools" / "rig-env"), "true"], capture_output=True, text=True
    )


def test_a_fresh_checkout_is_told_to_run_the_set_up(tmp_path: Path) -> None:
    result = _run(_workspace(tmp_path))
    assert result.returncode == 2
    assert result.stderr == "rig-env: the workspace is not set up; run 'make setup' first\n"


def test_an_interrupted_set_up_is_told_to_run_again(tmp_path: Path) -> None:
    root = _workspace(tmp_path)
    (root / ".venv" / "bin").mkdir(parents=True)
    (root / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (root / ".venv" / ".pump-rig-deps").touch()
    (root / "install").mkdir()
    # colcon wrote its top-level script, then the build was interrupted.
    (root / "install" / "setup.bash").write_text('. "$(dirname "$0")/local_setup.bash"\n')
    result = _run(root)
    assert result.returncode == 2
    assert (
        result.stderr
        == "rig-env: the set-up did not finish (interrupted?); run 'make setup' again\n"
    )
