"""Where numba keeps compiled kernels: a writable folder, also inside a read-only container.

numba reads ``NUMBA_CACHE_DIR`` when it is first imported, so this module runs before any kernel
module imports numba. Order: an explicit ``NUMBA_CACHE_DIR``; ``$XDG_CACHE_HOME/kubequant/numba``
(or ``~/.cache/kubequant/numba``) when it can be written; otherwise a per-user folder under the
system temp directory (a pod with a read-only root filesystem still has an emptyDir on /tmp).

A pod's cache starts empty, and compiling every kernel cold took 12-63 s on this project's machines
before the first feature. ``KUBEQUANT_NUMBA_SEED`` names a folder of kernels compiled ahead of time
(``kubequant precompile``, run when the image is built): its files are copied into the cache when they
are missing there. numba cannot use the seed in place: it refuses a cache folder it cannot write.
numba checks each entry against the kernel's source file (time and size), its own version and the CPU it
was compiled for, so a seed from another build or machine is not used; it is compiled again.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

SEED_ENV = "KUBEQUANT_NUMBA_SEED"


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError:
        return False
    return True


def cache_dir() -> Path:
    """The folder numba caches compiled kernels in (created if missing)."""
    explicit = os.environ.get("NUMBA_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    home_cache = Path(xdg) if xdg else Path.home() / ".cache"
    preferred = home_cache / "kubequant" / "numba"
    if _writable(preferred):
        return preferred
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"kubequant-numba-{uid}"


def seed(cache: Path, source: Path) -> int:
    """Copy the files of ``source`` missing from ``cache`` into it; how many were copied.

    Each file is written under a temporary name and renamed, so a process reading the cache at the same
    time (another worker of the same pod) sees a whole file or none.
    """
    copied = 0
    for src in sorted(source.rglob("*")):
        if not src.is_file():
            continue
        dst = cache / src.relative_to(source)
        if dst.exists():
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        part = dst.with_name(f".{dst.name}.{os.getpid()}.part")
        shutil.copyfile(src, part)
        os.replace(part, dst)
        copied += 1
    return copied


def configure() -> Path:
    """Point numba's cache at :func:`cache_dir` (seeded from ``KUBEQUANT_NUMBA_SEED`` when that is set),
    whether or not numba is imported yet."""
    path = cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    source = os.environ.get(SEED_ENV)
    if source and Path(source).is_dir() and Path(source).resolve() != path.resolve():
        seed(path, Path(source))
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    if "numba" in sys.modules:  # imported already (e.g. by another library): set its live config
        from numba.core import config

        config.CACHE_DIR = str(path)
    return path
