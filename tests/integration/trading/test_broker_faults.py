"""An Alpaca session under broker faults: a real Toxiproxy between the pod and the fake Alpaca.

The pod program (its real OMS, SQLite journal and Alpaca adapter over alpaca-py) trades through
Toxiproxy (``tests/unit/trading/toxiproxy_server.py``) to the fake Alpaca of the adapter tests
(``tests/unit/trading/alpaca_fake.py``), which also answers a seeded fraction of requests with a
5xx or a 429 with Retry-After. The stream, the fault mix and the comparison of the journal with
the venue are ``benchmarks/broker_faults.py``'s (it prints the same figures at 0, 1 and 5 %).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("alpaca.trading.client")

import broker_faults
import toxiproxy_server
from broker_faults import PROXY, Venue, measure, venue

from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.model.events import OrderFilled, OrderResent, RiskStateChanged

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def binary() -> Path:
    found = toxiproxy_server.find_binary()
    if found is None:
        pytest.skip(toxiproxy_server.missing_reason())
    return Path(found)


def wait_for(what: str, check: Callable[[], Any], v: Venue, seconds: float = 20) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} never happened:\n{v.pod.output()[-6000:]}")


def test_a_stream_of_orders_through_one_percent_faults_keeps_every_invariant(
    binary: Path, tmp_path: Path
) -> None:
    with venue(tmp_path, binary, seed=3) as v:
        out = measure(v, 0.01, signals_total=2000, workers=4, seed=3)
    report = broker_faults.table([out])
    assert not out.problems, "\n".join(out.problems)
    assert out.signals == out.sent == 2000, report  # one market order per signal
    # The faults reached the orders: submits whose outcome was unknown, settled by a query.
    assert out.in_flight >= 1 and sum(out.injected.values()) >= 1, report
    assert out.duplicates == 0 and out.refused_resends == 0, report
    assert out.lost_fills == 0 and out.position_mismatches == 0, report
    assert out.unsettled == 0, report
    assert out.states == [], report  # nothing the venue reported was unexplained: never halted
    assert out.success_rate >= 0.99, report
    # The only orders lost are those the venue never saw, found so by a query, whose one resend under
    # the same client order id (Alpaca refuses a reused one) was lost too: never resent on a guess.
    assert set(out.rejected) <= {"UNKNOWN_AT_BROKER"}, report
    assert out.sent - out.accepted == out.rejected["UNKNOWN_AT_BROKER"], report


def test_each_fault_on_a_submit_is_settled_without_a_duplicate(binary: Path, tmp_path: Path) -> None:
    """One signal per fault kind, the fault on every connection while it is sent; then the venue decides."""
    with venue(tmp_path, binary) as v:
        fake, proxy, pod = v.fake, v.proxy, v.pod
        answers: dict[str, dict[str, Any]] = {}
        kinds = {t.name: t for t in broker_faults.toxics(1.0)}
        for n, name in enumerate([*kinds, "503", "504", "429"], 1):
            if name in kinds:
                proxy.add(PROXY, dataclasses.replace(kinds[name], toxicity=1.0))
            else:  # the fake's HTTP faults: 503 before processing, 504 after, 429 with Retry-After
                fake.script["POST", "/v2/orders"] = [name]
            body = {"id": f"fault-{name}", "targets": [{"instrument": "AAPL", "quantity": n}]}
            code, answer = pod.call("POST", "/v1/signals", body)
            proxy.clear(PROXY)
            assert code == 202, answer
            answers[name] = answer["orders"][0]
            cid = answers[name]["clientOrderId"]

            def final(cid: str = cid) -> bool:
                order = next(o for o in pod.orders() if o["clientOrderId"] == cid)
                return order["status"] in ("filled", "rejected")

            wait_for(f"the order of {name} settled", final, v)
        orders = {o["clientOrderId"]: o for o in pod.orders()}
        wait_for(
            "positions equal to the venue's",
            lambda: pod.positions() == broker_faults.venue_positions(fake),
            v,
        )
    by_kind = {name: orders[a["clientOrderId"]] for name, a in answers.items()}
    journal = Journal(tmp_path / "volume" / "journal.sqlite")
    try:
        resent = {e.client_order_id for e in journal.events() if isinstance(e, OrderResent)}
    finally:
        journal.close()
    # What reached the venue is filled there and here; what did not (the query answered 404) was sent
    # once more under the same client order id, which Alpaca refuses to reuse, and is filled too.
    for name, order in by_kind.items():
        assert order["status"] == "filled", (name, order)
        assert fake.by_client_id(order["clientOrderId"]) is not None, name
    lost = ("request-swallowed", "request-reset", "503")
    assert resent == {by_kind[name]["clientOrderId"] for name in lost}
    assert len(fake.orders) == len(by_kind)  # one venue order per signal
    # No POST was processed twice (a second one would be a 422 duplicate, its body kept): the 429 was
    # refused unprocessed and sent again, the lost ones resent once, every other fault left to a query.
    assert len(fake.bodies) == len(fake.orders)
    # Every POST that reached the venue: the two the proxy lost never arrived, the 429's came twice,
    # and each of the three lost requests came once more as its resend.
    assert fake.requests["POST", "/v2/orders"] == len(by_kind) - 2 + 1 + len(lost)


@pytest.mark.parametrize(
    ("action", "state", "refusal"), [("reduceOnly", "REDUCING", "REDUCE_ONLY"), ("halt", "HALTED", "HALTED")]
)
def test_an_outage_past_the_disconnect_grace_takes_the_policys_state_until_reconciled(
    binary: Path, tmp_path: Path, action: str, state: str, refusal: str
) -> None:
    grace = 1
    with venue(tmp_path, binary, grace=grace, action=action) as v:
        fake, proxy, pod = v.fake, v.proxy, v.pod
        # A limit order rests at the venue (the fake executes only market orders as they arrive).
        body = {
            "id": "rest",
            "targets": [{"instrument": "AAPL", "quantity": 10}],
            "limitPrices": {"AAPL": 170},
        }
        code, answer = pod.call("POST", "/v1/signals", body)
        assert code == 202 and answer["orders"][0]["accepted"], answer
        cid = answer["orders"][0]["clientOrderId"]
        wait_for("the order accepted", lambda: pod.orders()[0]["status"] == "accepted", v)
        assert pod.status()["tradingState"] == "ACTIVE"

        # The proxy goes down: connections to the Trading API are refused.
        down = time.monotonic()
        proxy.set_enabled(PROXY, False)
        status = wait_for(state, lambda: (s := pod.status())["tradingState"] == state and s, v)
        assert time.monotonic() - down >= grace, "acted before the grace period ran out"
        assert status["brokerConnected"] is False and "broker disconnected" in status["haltReason"], status
        # Meanwhile the venue fills the resting order, and an order that adds exposure is refused here.
        remote = fake.by_client_id(cid)
        assert remote is not None
        with fake.lock:
            fake.fill(remote, "10", "170.00")
        posts = fake.posts
        code, answer = pod.call(
            "POST", "/v1/signals", {"id": "more", "targets": [{"instrument": "MSFT", "quantity": 3}]}
        )
        assert code == 202 and not answer["orders"][0]["accepted"], answer
        assert answer["orders"][0]["reason"] == refusal, answer
        assert fake.posts == posts

        # Back up: the pod reconnects, reconciles the fill it missed and trades again.
        proxy.set_enabled(PROXY, True)
        wait_for(
            "ACTIVE again, the missed fill reconciled",
            lambda: (
                (s := pod.status())["tradingState"] == "ACTIVE"
                and s["brokerConnected"]
                and pod.positions() == {"AAPL": Decimal(10)} == broker_faults.venue_positions(fake)
            ),
            v,
        )
        code, answer = pod.call(
            "POST", "/v1/signals", {"id": "again", "targets": [{"instrument": "MSFT", "quantity": 3}]}
        )
        assert code == 202 and answer["orders"][0]["accepted"], answer
        wait_for("the new order filled", lambda: pod.positions().get("MSFT") == 3, v)
        assert pod.terminate() == 0, pod.output()[-4000:]

    journal = Journal(tmp_path / "volume" / "journal.sqlite")
    try:
        events = journal.events()
    finally:
        journal.close()
    states = [(i, e.state) for i, e in enumerate(events) if isinstance(e, RiskStateChanged)]
    filled = next(i for i, e in enumerate(events) if isinstance(e, OrderFilled) and e.client_order_id == cid)
    assert [s for _, s in states] == [state, "ACTIVE"], states
    # The journal took the state back to ACTIVE only once the fill missed during the outage was in it.
    assert states[0][0] < filled < states[1][0], (states, filled)
