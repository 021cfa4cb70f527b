"""Rewrite the wheel builder's paths baked into the ROS wheels' CMake export files.

The ROS 2 message wheels on PyPI were built under /opt/python/cp311-cp311; their exported
``*__rosidl_generator_pyExport.cmake`` files name that prefix's Python and numpy include
directories, and any package that generates interfaces against them fails to configure.
This rewrites them to this interpreter's directories. Idempotent.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

BUILDER_PREFIX = re.compile(r"/opt/python/cp3\d+-cp3\d+")


def local_paths() -> dict[str, str]:
    import numpy

    return {
        "python_include": sysconfig.get_paths()["include"],
        "numpy_include": numpy.get_include(),
    }


def rewrite(text: str, paths: dict[str, str]) -> str:
    text = re.sub(BUILDER_PREFIX.pattern + r"/include/python3\.\d+", paths["python_include"], text)
    return re.sub(
        BUILDER_PREFIX.pattern + r"/lib/python3\.\d+/site-packages/numpy/_core/include",
        paths["numpy_include"],
        text,
    )


def main() -> int:
    share = Path(sys.prefix) / "share"
    paths = local_paths()
    changed = 0
    for cmake_file in share.glob("*/cmake/*.cmake"):
        text = cmake_file.read_text()
        if not BUILDER_PREFIX.search(text):
            continue
        new_text = rewrite(text, paths)
        if BUILDER_PREFIX.search(new_text):
            print(f"fix_wheel_cmake: unknown builder path left in {cmake_file}", file=sys.stderr)
            return 1
        cmake_file.write_text(new_text)
        changed += 1
    print(f"fix_wheel_cmake: {changed} CMake export file(s) rewritten under {share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
