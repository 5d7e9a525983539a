"""Where compiled kernels are cached: writable, also when the home folder is read-only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kubequant.workloads.features import numba_cache


def test_explicit_numba_cache_dir_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "explicit"))
    assert numba_cache.cache_dir() == tmp_path / "explicit"


def test_xdg_cache_home_is_used_when_writable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert numba_cache.cache_dir() == tmp_path / "kubequant" / "numba"
    assert (tmp_path / "kubequant" / "numba").is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_read_only_cache_home_falls_back_to_temp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(locked))
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    got = numba_cache.cache_dir()
    assert got.parent == tmp_path / "tmp" and got.name.startswith("kubequant-numba-")


def test_unwritable_cache_home_falls_back_to_temp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A path under a regular file can never be created, even by root: the read-only-root case.
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    got = numba_cache.cache_dir()
    assert got.name.startswith("kubequant-numba-")


def test_configure_points_live_numba_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from numba.core import config

    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "live"))
    before = config.CACHE_DIR
    try:
        assert numba_cache.configure() == tmp_path / "live"
        assert config.CACHE_DIR == str(tmp_path / "live")
    finally:
        config.CACHE_DIR = before  # the environment variable is restored by monkeypatch


def test_a_seed_fills_what_the_cache_lacks_and_keeps_what_it_has(tmp_path: Path) -> None:
    """KUBEQUANT_NUMBA_SEED (kernels compiled when the image was built) is copied into a fresh cache."""
    seed, cache = tmp_path / "seed", tmp_path / "cache"
    (seed / "features_abc").mkdir(parents=True)
    (seed / "features_abc" / "kernels.shift-396.py311.nbi").write_bytes(b"index")
    (seed / "features_abc" / "kernels.shift-396.py311.1.nbc").write_bytes(b"code")
    (cache / "features_abc").mkdir(parents=True)
    (cache / "features_abc" / "kernels.shift-396.py311.nbi").write_bytes(b"newer")
    assert numba_cache.seed(cache, seed) == 1
    assert (cache / "features_abc" / "kernels.shift-396.py311.1.nbc").read_bytes() == b"code"
    assert (cache / "features_abc" / "kernels.shift-396.py311.nbi").read_bytes() == b"newer"
    assert not list(cache.rglob("*.part"))
    assert numba_cache.seed(cache, seed) == 0


def test_configure_seeds_the_cache_it_points_numba_at(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from numba.core import config

    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "k.nbi").write_bytes(b"x")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "live"))
    monkeypatch.setenv(numba_cache.SEED_ENV, str(seed))
    before = config.CACHE_DIR
    try:
        assert numba_cache.configure() == tmp_path / "live"
        assert (tmp_path / "live" / "k.nbi").read_bytes() == b"x"
    finally:
        config.CACHE_DIR = before
