"""The trading pod's process: journal, risk engine, OMS and paper broker, recovered and then fed signals.

``python -m kubequant.workloads.trading.runtime --session session.yaml --state-dir /var/lib/kubequant``
runs a paper session with a deterministic stream of synthetic signals (``--signals N``); the
signal API and ``kubequant run --replay`` build on ``TradingRuntime``. ``prepare`` (qlib and the
bars: seconds) is split from ``TradingRuntime.start`` (the journal and the broker: milliseconds)
so a restart after a crash is quick and the crash test can fork many lives from one prepared parent.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from kubequant.api.live import LiveTradingSession
from kubequant.api.risk import RiskPolicy
from kubequant.errors import ConfigError, KubequantError
from kubequant.manifests import load_resources
from kubequant.workloads.trading.brokers.paper import PaperBroker
from kubequant.workloads.trading.brokers.qlib_market import QlibMarket
from kubequant.workloads.trading.journal import Journal
from kubequant.workloads.trading.oms import OrderManager
from kubequant.workloads.trading.policy import FileWatcher, PolicyWatcher, load_policy
from kubequant.workloads.trading.reconcile import poll
from kubequant.workloads.trading.recovery import RecoveryReport, recover
from kubequant.workloads.trading.risk_engine import RiskEngine
from kubequant.workloads.trading.signals import SyntheticSignals, plan_orders

log = logging.getLogger(__name__)
EXIT_HALTED = 3  # recovery failed closed: no strategy may start


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything one trading process needs: the session, its policy file and its volume."""

    session: LiveTradingSession
    policy_path: Path
    state_dir: Path
    broker_record: Path | None = None  # the paper broker's own file; default <state-dir>/paper-broker.sqlite
    data_path: Path | None = None  # override of spec.data (a mounted bundle)
    signals: int = 0  # synthetic signals to send; 0 sends none
    signal_seed: int = 0
    advance_every: int = 5  # the paper market moves one bar every this many signals
    redeliver: int = 3  # after a restart, the last few signals are sent again: they must change nothing
    poll_every: int = 1  # housekeeping (fills, order statuses, account) every this many signals
    session_path: Path | None = None  # watched for spec.halted (the kill switch) without a restart

    @property
    def journal_path(self) -> Path:
        """The journal on the session's volume."""
        return self.state_dir / "journal.sqlite"

    @property
    def broker_path(self) -> Path:
        """The paper broker's record."""
        return self.broker_record or self.state_dir / "paper-broker.sqlite"


def read_session(path: Path) -> tuple[LiveTradingSession, RiskPolicy | None]:
    """The LiveTradingSession (and a RiskPolicy, if the file has one) of a manifest file."""
    session, policy = None, None
    for res in load_resources(path):
        if isinstance(res, LiveTradingSession) and session is None:
            session = res
        elif isinstance(res, RiskPolicy) and policy is None:
            policy = res
    if session is None:
        raise ConfigError("no LiveTradingSession in the file", where=str(path), fix="add one")
    return session, policy


def bundle_path(session: LiveTradingSession, override: Path | None = None) -> Path:
    """The qlib bundle of the session: an override, ``spec.data.path``, or the cached sample."""
    data = session.spec.data
    if override is not None:
        return override
    if data.path is not None:
        return Path(data.path)
    sample = data.resolved_sample()
    if sample is None:
        raise ConfigError(
            "a volume bundle is only mounted in the cluster", where="spec.data.volume", fix="pass --data PATH"
        )
    from kubequant.workloads.data.sample import SampleSpec, ensure_sample_bundle

    return ensure_sample_bundle(
        SampleSpec(
            instruments=sample.instruments, start=str(sample.start), end=str(sample.end), seed=sample.seed
        )
    )


def prepare(cfg: RuntimeConfig) -> QlibMarket:
    """Initialise qlib on the bundle and load the bars into qlib's Exchange (the slow part of a start)."""
    import qlib
    from qlib.data import D

    spec = cfg.session.spec
    qlib.init(
        provider_uri=str(bundle_path(cfg.session, cfg.data_path)),
        region=spec.data.region,
        kernels=1,
        logging_level=logging.WARNING,
        expression_cache=None,
        dataset_cache=None,
    )
    if spec.replay is not None and spec.replay.period is not None:
        start, end = spec.replay.period.split("..")
    else:
        calendar = D.calendar(freq="day")
        start, end = str(calendar[0].date()), str(calendar[-1].date())
    return QlibMarket.load(spec.exchange, spec.universe.resolved_market(), start, end)


class TradingRuntime:
    """The components of one session, wired together; ``start`` recovers before anything trades."""

    def __init__(self, cfg: RuntimeConfig, market: QlibMarket) -> None:
        spec = cfg.session.spec
        self.cfg = cfg
        self.journal = Journal(cfg.journal_path)
        self.broker = PaperBroker(market, cfg.broker_path, starting_cash=Decimal(repr(spec.starting_cash)))
        self.risk = RiskEngine(load_policy(cfg.policy_path), kill_switch=spec.halted)
        self.oms = OrderManager(cfg.session.metadata.name, self.journal, self.broker, self.risk, self.broker)
        self.policy_watcher = PolicyWatcher(cfg.policy_path, self.risk)
        self.session_watcher = FileWatcher(cfg.session_path) if cfg.session_path else None

    async def start(self) -> RecoveryReport:
        """Replay the journal and reconcile with the broker; ``oms.ready`` says whether to trade."""
        return await recover(self.oms)

    async def tick(self) -> None:
        """The periodic housekeeping: policy and kill switch, fills, in-flight orders, account, trading state."""
        self.policy_watcher.poll()
        if self.session_watcher is not None and self.session_watcher.changed():
            try:
                session, _ = read_session(self.session_watcher.path)
            except KubequantError as err:
                log.error("ignoring the changed session file: %s", err.one_line())
            else:
                self.risk.set_kill_switch(session.spec.halted)
        await poll(self.oms)  # journals the new state, and a halt cancels the open orders

    def close(self) -> None:
        """Close the journal and the broker's record."""
        self.journal.close()
        self.broker.close()

    async def run_synthetic(self) -> int:
        """Send ``cfg.signals`` synthetic signals, resuming after the last one the journal has."""
        cfg, oms = self.cfg, self.oms
        source = SyntheticSignals(self.broker.market.instruments, cfg.signal_seed)
        seen = [
            SyntheticSignals.index(o.signal_id) for o in [*oms.state.orders.values(), *oms.state.superseded]
        ]
        done = max((k for k in seen if k is not None), default=-1)
        sent = 0
        for k in range(max(0, done + 1 - cfg.redeliver), cfg.signals):
            signal = source.signal(k)
            view = oms.view(*(t.instrument for t in signal.targets))
            for intent in plan_orders(signal, view.positions, view.marks, view.equity):
                await oms.submit(intent)
            sent += 1
            if (k + 1) % cfg.advance_every == 0 and not self.broker.exhausted:
                self.broker.advance()
            if (k + 1) % cfg.poll_every == 0:
                await self.tick()
        return sent


async def run(
    cfg: RuntimeConfig, market: QlibMarket, on_ready: Callable[[RecoveryReport], None] | None = None
) -> int:
    """One life of the process: recover, then trade the synthetic signals; the exit code.

    ``on_ready`` is called once recovery has settled every order and the session may trade.
    """
    runtime = TradingRuntime(cfg, market)
    try:
        report = await runtime.start()
        if not runtime.oms.ready:
            log.error("recovery failed closed, no strategy starts: %s", report.halted)
            return EXIT_HALTED
        if on_ready is not None:
            on_ready(report)
        await runtime.run_synthetic()
        await runtime.tick()
        return 0
    finally:
        runtime.close()


def parse_args(argv: list[str] | None) -> RuntimeConfig:
    """The RuntimeConfig from the command line."""
    p = argparse.ArgumentParser(prog="kubequant-trading-runtime", description=__doc__.splitlines()[0])
    p.add_argument("--session", type=Path, required=True, help="manifest with the LiveTradingSession")
    p.add_argument("--policy", type=Path, help="RiskPolicy file (watched); default: the session file")
    p.add_argument("--state-dir", type=Path, required=True, help="the session's volume (journal)")
    p.add_argument("--broker-record", type=Path, help="the paper broker's SQLite file")
    p.add_argument("--data", type=Path, help="qlib bundle path (overrides spec.data)")
    p.add_argument("--signals", type=int, default=0, help="synthetic signals to send")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic signals")
    p.add_argument("--advance-every", type=int, default=5, help="signals per paper bar")
    a = p.parse_args(argv)
    session, _ = read_session(a.session)
    return RuntimeConfig(
        session=session,
        policy_path=a.policy or a.session,
        state_dir=a.state_dir,
        session_path=a.session,
        broker_record=a.broker_record,
        data_path=a.data,
        signals=a.signals,
        signal_seed=a.seed,
        advance_every=a.advance_every,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the trading process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = parse_args(argv)
        market = prepare(cfg)
        return asyncio.run(run(cfg, market))
    except KubequantError as err:
        log.error("%s", err.one_line())
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
