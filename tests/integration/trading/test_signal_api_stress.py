"""100 concurrent clients on the signal API of the trading pod program (the users' "100 concurrency").

The run is ``benchmarks/signal_stress.py``'s (``signal_stress.run``): the pod program on a paper
session (a bar every 0.5 s, housekeeping every 0.2 s), 100 aiohttp clients with a connection each
sending signals at once, each one lot more of its own instrument; then the pod is stopped and its
journal compared with the paper venue's record.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import signal_stress

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIENTS, PER = 100, 10


@pytest.fixture(scope="module")
def stress_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(signal_stress.stress_bundle(tmp_path_factory.mktemp("stress"), CLIENTS))


def test_one_hundred_concurrent_clients_get_answers_and_each_signal_is_journaled_once(
    stress_bundle: Path, tmp_path: Path
) -> None:
    out = signal_stress.run(stress_bundle, tmp_path, CLIENTS, PER)
    text = out.line()
    print(text)  # the p50/p99 of this run, in the test's output (-s or -rP)
    led = out.ledger
    # No error: every request answered, 2xx or a documented refusal (429 with Retry-After and a fix).
    assert not out.errors, "\n".join(out.errors[:20]) + "\n" + text
    assert out.requests == CLIENTS * PER and set(out.statuses) <= {200, 202, 429}, text
    assert out.exit_code == 0, text
    # Every accepted signal journaled exactly once, one buy order each, at the venue once.
    accepted = out.statuses[200] + out.statuses[202]
    assert accepted >= CLIENTS * PER // 2, text  # the default rate limit (5,000/s) leaves room for all
    assert led.signals_answered == accepted and led.signals_missing == 0, text
    assert led.signals_journaled == accepted and led.signals_journaled_twice == 0, text
    assert out.orders_per_signal == {1: accepted}, text
    assert led.orders == led.submitted == led.at_venue == accepted, text
    assert led.duplicates == 0 and led.lost == 0 and led.unknown_at_venue == 0, text
    assert led.fill_mismatches == 0 and led.position_mismatches == 0, text
