"""A few simulated weeks of the soak: the pod program replaying bars at speed, signals through 5 % faults.

The run is ``benchmarks/soak.py``'s (``soak.run``): the trading pod's program on a paper session
with ``spec.replay`` (a bar every 0.3 s, housekeeping every 0.2 s), one client sending signals at a
steady rate through a real Toxiproxy in front of the signal API and sending a signal again, same id
and payload, after each fault; the pod's RSS, open descriptors and journal are sampled per
simulated week, and after a SIGTERM its journal is compared with the paper venue's own record.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import soak
import toxiproxy_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def binary() -> Path:
    found = toxiproxy_server.find_binary()
    if found is None:
        pytest.skip(toxiproxy_server.missing_reason())
    return Path(found)


def test_a_few_simulated_weeks_through_faults_keep_every_invariant(
    binary: Path, trading_bundle: Path, tmp_path: Path
) -> None:
    cfg = soak.SoakConfig(days=30, rate=20, fault_rate=0.05, bar_seconds=0.3, seed=7)
    result = soak.run(cfg, trading_bundle, tmp_path, binary)
    text = soak.report(result)
    led = result.ledger
    # No crash: the pod served the whole replay and stopped cleanly on SIGTERM.
    assert not result.problems, "\n".join(result.problems) + "\n" + text
    assert result.exit_code == 0, text
    assert len(result.weeks) >= 5 and result.weeks[-1].bars == cfg.days, text
    # The faults reached the client, and it sent those signals again.
    assert result.attempts > led.signals_sent >= 100, text
    # Every signal answered and journaled once; one buy order each, submitted once, none lost.
    assert led.signals_answered == led.signals_sent == led.signals_journaled, text
    assert led.signals_journaled_twice == 0 and led.signals_missing == 0, text
    assert led.orders == led.signals_sent == led.submitted == led.at_venue, text
    assert led.lost == 0 and led.unknown_at_venue == 0 and led.duplicates == 0, text
    # The journal equals the venue: filled quantities and positions.
    assert led.fill_mismatches == 0 and led.position_mismatches == 0, text
    assert led.fills > 0, text
    # Bounded resources: descriptors do not climb with the signals, the resident set stays near its start.
    fds = [w.fds for w in result.weeks]
    assert max(fds) <= fds[0] + 8, text
    rss = [w.rss_mb for w in result.weeks]
    assert max(rss) <= rss[0] * 1.15, text
    # The WAL is checkpointed and reused: it stays far below the journal it has been writing.
    assert result.weeks[-1].wal_bytes < 64 << 20, text
