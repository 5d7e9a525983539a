"""Every API call of the operator gives its connection back to the pool.

The operator reads responses raw (``_preload_content=False``); a response that is never read keeps its
connection checked out, so the next call opens a new one: a TLS handshake per Event and per status
patch. In a burst of 200 Backtests a profile of the operator showed ~20 % of its samples in TLS
handshakes (``create_event`` and ``patch_custom_status`` did not read their answers).

A loopback HTTP/1.1 server counts the connections the client opens: calls made one after another
must share one.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

from kubequant.operator import kube

pytestmark = pytest.mark.unit


class _Counting(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0

    def get_request(self) -> Any:
        request = super().get_request()
        self.connections += 1
        return request


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as kube-apiserver

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps({"kind": "Anything", "metadata": {"name": "x"}, "items": []}).encode()
        self.send_response(200 if self.command != "POST" else 201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = do_PUT = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Counting]:
    srv = _Counting(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    cfg = client.Configuration(host=f"http://127.0.0.1:{srv.server_address[1]}")
    api = client.ApiClient(cfg)
    monkeypatch.setattr(kube, "api", lambda: api)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        api.close()


EVENT = {
    "metadata": {"name": "bt.accepted.1", "namespace": "ns"},
    "involvedObject": {"kind": "Backtest", "name": "bt", "namespace": "ns"},
    "reason": "Accepted",
}

CALLS: dict[str, Callable[[], object]] = {
    "create_event": lambda: kube.create_event(EVENT),
    "patch_custom_status": lambda: kube.patch_custom_status("backtests", "ns", "bt", {"phase": "Running"}),
    "read_custom": lambda: kube.read_custom("backtests", "ns", "bt"),
    "pvc_exists": lambda: kube.pvc_exists("ns", "data"),
    "job_pods": lambda: kube.job_pods("ns", "bt-backtest", "42"),
    "list_pods": lambda: kube.list_pods("ns", "app=x"),
    "patch_job_suspend": lambda: kube.patch_job_suspend("ns", "bt-backtest", True),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_calls_one_after_another_share_one_connection(server: _Counting, name: str) -> None:
    call = CALLS[name]
    for _ in range(5):
        call()
    assert server.connections == 1, f"{name}: {server.connections} connections for 5 calls (1 expected)"
