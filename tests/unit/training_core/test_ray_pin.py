"""One Ray version everywhere: the pyproject pin, the lock and kubequant.version.RAY_VERSION agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from kubequant.version import RAY_VERSION

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


def test_pyproject_pins_ray_with_its_extras_to_the_constant() -> None:
    deps = [
        Requirement(d)
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    (ray,) = [d for d in deps if d.name == "ray"]
    assert str(ray.specifier) == f"=={RAY_VERSION}"
    assert {"default", "train", "tune"} <= ray.extras


def test_the_lock_installs_the_same_ray() -> None:
    assert re.search(
        rf"^ray(\[[^\]]*\])?=={re.escape(RAY_VERSION)} ", (ROOT / "requirements.lock").read_text(), re.M
    )
