"""What the image is built from is pinned: the base by digest, every Python package by version and hash
(requirements.lock, written by `make lock`). Offline: the lock is read, not resolved again.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK = REPO_ROOT / "requirements.lock"
FIX = "run `make lock` and commit requirements.lock"
# The image: CPython 3.11 on Debian (linux, x86_64 or aarch64), any patch release.
IMAGE_ENVIRONMENTS = [
    {
        "python_version": "3.11",
        "python_full_version": patch,
        "sys_platform": "linux",
        "platform_system": "Linux",
        "os_name": "posix",
        "platform_machine": machine,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
    }
    for patch in ("3.11.0", "3.11.9", "3.11.14")
    for machine in ("x86_64", "aarch64")
]


@dataclass
class Pin:
    name: str
    version: Version
    marker: Marker | None
    hashes: list[str] = field(default_factory=list)

    def applies(self, env: dict[str, str]) -> bool:
        return self.marker is None or self.marker.evaluate(env)


def read_lock(text: str) -> list[Pin]:
    """The pins of a hashed requirements file (`name==version [; marker] --hash=... ...`)."""
    pins: list[Pin] = []
    for logical in re.sub(r"\\\n", " ", text).splitlines():
        line = logical.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        assert not re.match(r"-|git\+|https?:", line), f"not a pinned package: {line}"
        spec, *hashes = re.split(r"\s+--hash=", line)
        req = Requirement(spec)
        (clause,) = req.specifier
        assert clause.operator == "==", f"{req.name} is not pinned to one version: {spec}"
        pins.append(Pin(canonicalize_name(req.name), Version(clause.version), req.marker, hashes))
    return pins


def declared_requirements() -> list[Requirement]:
    """What the image installs: the dependencies, the alpaca and cn extras, and the build backend."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    return [
        Requirement(r)
        for r in (
            *project["project"]["dependencies"],
            *project["project"]["optional-dependencies"]["alpaca"],
            *project["project"]["optional-dependencies"]["cn"],
            *project["build-system"]["requires"],
        )
    ]


def drift(lock: list[Pin], requirements: list[Requirement]) -> list[str]:
    """Why the lock does not satisfy the requirements in every image environment (empty: it does)."""
    problems = []
    for env in IMAGE_ENVIRONMENTS:
        where = f"Python {env['python_full_version']} on {env['platform_machine']}"
        pins = {}
        for pin in lock:
            if pin.applies(env):
                if pin.name in pins:
                    problems.append(f"{pin.name} is pinned twice for {where}")
                pins[pin.name] = pin
        for req in requirements:
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            pin = pins.get(canonicalize_name(req.name))
            if pin is None:
                problems.append(f"{req} is not in the lock for {where}")
            elif not req.specifier.contains(pin.version, prereleases=True):
                problems.append(f"{req} but the lock pins {pin.name}=={pin.version}")
    return sorted(set(problems))


def test_lock_pins_every_package_with_hashes() -> None:
    text = LOCK.read_text()
    assert "make lock" in text.splitlines()[1], f"requirements.lock was not written by `make lock`: {FIX}"
    pins = read_lock(text)
    assert len(pins) > 50
    for pin in pins:
        assert pin.hashes, f"{pin.name}=={pin.version} has no hash: {FIX}"
        for digest in pin.hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{pin.name}: {digest}"


def test_lock_covers_every_declared_dependency() -> None:
    """pyproject.toml changed without `make lock`: the image would not install what the package needs."""
    problems = drift(read_lock(LOCK.read_text()), declared_requirements())
    assert problems == [], f"requirements.lock is out of date ({FIX}):\n" + "\n".join(problems)


def test_drift_check_catches_a_changed_pyproject() -> None:
    """The check above is not vacuous: a new dependency, or a tightened range, is caught."""
    lock = read_lock(LOCK.read_text())
    requirements = declared_requirements()
    assert drift(lock, [*requirements, Requirement("left-pad>=1")])[0].startswith("left-pad>=1 is not in")
    kopf = next(p for p in lock if p.name == "kopf")
    newer = Requirement(f"kopf>{kopf.version}")
    assert any("but the lock pins kopf" in p for p in drift(lock, [newer]))
    # An entry for another platform only does not count.
    windows_only = [p for p in lock if p.name != "kopf"] + [
        Pin("kopf", kopf.version, Marker("sys_platform == 'win32'"), kopf.hashes)
    ]
    assert any(p.startswith("kopf") for p in drift(windows_only, requirements))


def test_dockerfile_installs_only_the_lock_on_a_pinned_base() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M)
    assert base and re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", base.group(1)), base
    assert all(
        line == "FROM ${PYTHON_IMAGE}" or line.startswith("FROM ${PYTHON_IMAGE} AS ")
        for line in re.findall(r"^FROM .*$", dockerfile, re.M)
    )
    installs = re.findall(r"pip install [^\n]*", dockerfile)
    assert installs == [
        "pip install --require-hashes --no-deps --no-build-isolation -r requirements.lock",
        "pip install --no-deps --no-build-isolation . \\",
    ], installs
    # The lock is installed before the package, so nothing but the lock is resolved.
    assert dockerfile.index("-r requirements.lock") < dockerfile.index("COPY kubequant/")
