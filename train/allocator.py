"""Whether this process runs on a caching memory allocator, and how to get one.

TensorFlow's CPU kernels allocate and free large tensors every step. glibc's malloc hands
each of them to the kernel and back (``mmap``/``munmap``), so every step pays fresh page
faults; on a virtual machine that costs more than the arithmetic (docs/model.md, "On a
virtual machine: preload tcmalloc": an epoch took 63.9 s with glibc's malloc and 34.7 s with
tcmalloc on this project's 2-core build VM). tcmalloc and jemalloc keep the memory.
"""

from __future__ import annotations

import platform
from pathlib import Path

CACHING = ("tcmalloc", "jemalloc")


def _own_maps() -> str | None:
    try:
        return Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: nothing to say
        return None


def loaded_allocator(maps: str) -> str | None:
    """The caching allocator named in ``maps`` (a ``/proc/PID/maps`` text), or None."""
    return next((name for name in CACHING if f"lib{name}" in maps), None)


def preload_hint(maps: str | None = None, libdir: Path | None = None) -> str | None:
    """One line on how to train faster with a caching allocator, or None when one is loaded (or this is not Linux).

    ``maps`` defaults to this process's own ``/proc/self/maps``.
    """
    maps = _own_maps() if maps is None else maps
    if maps is None or loaded_allocator(maps) is not None:
        return None
    libdir = libdir or Path(f"/usr/lib/{platform.machine()}-linux-gnu")
    lib = libdir / "libtcmalloc_minimal.so.4"
    how = (f"LD_PRELOAD={lib} deepfer-train ..." if lib.exists() else
           "sudo apt-get install libtcmalloc-minimal4, then "
           "LD_PRELOAD=/usr/lib/$(uname -m)-linux-gnu/libtcmalloc_minimal.so.4 deepfer-train ...")
    return (f"training on glibc's malloc, whose page faults can double a CPU epoch on a virtual machine; {how} "
            "(docs/model.md, 'preload tcmalloc')")
