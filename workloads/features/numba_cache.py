"""Where numba keeps compiled kernels: a writable folder, also inside a read-only container.

numba reads ``NUMBA_CACHE_DIR`` when it is first imported, so this module runs before any kernel
module imports numba. Order: an explicit ``NUMBA_CACHE_DIR``; ``$XDG_CACHE_HOME/kubequant/numba``
(or ``~/.cache/kubequant/numba``) when it can be written; otherwise a per-user folder under the
system temp directory (a pod with a read-only root filesystem still has an emptyDir on /tmp).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


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


def configure() -> Path:
    """Point numba's cache at :func:`cache_dir`, whether or not numba is imported yet."""
    path = cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["NUMBA_CACHE_DIR"] = str(path)
    if "numba" in sys.modules:  # imported already (e.g. by another library): set its live config
        from numba.core import config

        config.CACHE_DIR = str(path)
    return path
