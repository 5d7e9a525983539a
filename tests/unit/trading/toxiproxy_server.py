"""A real Toxiproxy (``toxiproxy-server``) on 127.0.0.1, driven over its HTTP API, for broker fault tests.

Toxiproxy is a TCP proxy that injects faults into the connections through it ("toxics"): latency,
timeouts, resets, slow or cut answers, each with a ``toxicity`` (the probability that a new
connection gets it). The binary is built from the Go module proxy at the version of
``hack/versions.env`` by ``hack/build-k8s.sh toxiproxy`` (``make test`` runs it). Used by
``tests/integration/trading/test_broker_faults.py`` and ``benchmarks/broker_faults.py``, which load
this file by path.

Its API (``README.md`` of github.com/Shopify/toxiproxy/v2): ``POST /proxies`` creates a proxy
(``name``, ``listen``, ``upstream``, ``enabled``), ``POST /proxies/{name}`` updates one (``enabled:
false`` takes it down: new connections are refused), ``POST /proxies/{name}/toxics`` adds a toxic
(``type``, ``stream`` upstream or downstream, ``toxicity``, ``attributes``), ``DELETE
/proxies/{name}/toxics/{toxic}`` removes it, ``POST /reset`` re-enables every proxy and removes all
toxics.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[3]
BINARY = "toxiproxy-server"
# A toxiproxy-server built elsewhere (a development checkout): used instead of the build folder's.
BINARY_ENV = "KUBEQUANT_TOXIPROXY_SERVER"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_binary() -> Path | None:
    """``toxiproxy-server`` from $KUBEQUANT_TOXIPROXY_SERVER, else hack/build-k8s.sh's bin folder; None if absent."""
    override = os.environ.get(BINARY_ENV)
    if override:
        return Path(override) if os.access(override, os.X_OK) else None
    script = REPO_ROOT / "hack" / "build-k8s.sh"
    bash = shutil.which("bash")
    if bash is None:
        return None
    done = subprocess.run([bash, str(script), "--print-bin-dir"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    path = Path(done.stdout.strip()) / BINARY
    return path if os.access(path, os.X_OK) else None


def missing_reason() -> str:
    """Why a fault test cannot run without the binary, and the command that builds it."""
    return (
        f"these tests need {BINARY} (Toxiproxy) and it is not built: run `hack/build-k8s.sh toxiproxy` "
        "(builds it at TOXIPROXY_VERSION of hack/versions.env; `make test` does), "
        f"or set {BINARY_ENV} to a built toxiproxy-server"
    )


class ToxiproxyError(RuntimeError):
    """Toxiproxy's API refused a request (its status and message), or the server did not start."""


@dataclass(frozen=True)
class Toxic:
    """One toxic as Toxiproxy's API takes it."""

    name: str
    type: str  # latency, timeout, reset_peer, slow_close, bandwidth, slicer, limit_data
    stream: str = "downstream"  # downstream: server -> client; upstream: client -> server
    toxicity: float = 1.0
    attributes: tuple[tuple[str, int], ...] = ()

    def body(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }


class Toxiproxy:
    """A ``toxiproxy-server`` subprocess on a free loopback port; ``stop()`` (or ``with``) ends it."""

    def __init__(self, binary: Path, *, seed: int = 0, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb") if log_path is not None else None  # closed by stop()
        self.proc = subprocess.Popen(
            [str(binary), "-host", "127.0.0.1", "-port", str(self.port), "-seed", str(seed)],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env={**os.environ, "LOG_LEVEL": "warn"},
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self.request("GET", "/version")
                break
            except (OSError, ToxiproxyError) as err:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise ToxiproxyError(f"{binary} did not start on port {self.port}: {err}") from err
                time.sleep(0.05)

    def __enter__(self) -> Toxiproxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call to Toxiproxy's API; its JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.api}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise ToxiproxyError(
                f"{method} {path}: {err.code} {err.read().decode(errors='replace')}"
            ) from None
        return json.loads(raw) if raw else None

    def proxy(self, name: str, upstream: str) -> str:
        """Create a proxy to ``upstream`` (host:port) on a free loopback port; its ``http://`` URL."""
        listen = f"127.0.0.1:{free_port()}"
        made = self.request("POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream})
        return f"http://{made['listen']}"

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Take a proxy down (its port refuses connections, open ones are cut) or bring it back."""
        self.request("POST", f"/proxies/{name}", {"enabled": enabled})

    def add(self, proxy: str, toxic: Toxic) -> None:
        self.request("POST", f"/proxies/{proxy}/toxics", toxic.body())

    def remove(self, proxy: str, name: str) -> None:
        self.request("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/proxies/{proxy}/toxics"))

    def clear(self, proxy: str) -> None:
        """Remove every toxic of ``proxy``."""
        for toxic in self.toxics(proxy):
            self.remove(proxy, toxic["name"])

    def reset(self) -> None:
        """Re-enable every proxy and remove all toxics."""
        self.request("POST", "/reset")
