"""The trading pod's program: journal, risk engine, OMS and broker, recovered, then serving the signal API.

``python -m kubequant.workloads.trading.node.runtime --session session.yaml --state-dir /var/lib/kubequant``
connects to the broker (``spec.broker``: the paper broker over qlib's bars, or Alpaca with its
credentials Secret mounted at ``--secrets-dir``), recovers (journal replay and reconciliation;
exit ``EXIT_HALTED`` if that fails closed), then serves the signal API on
``spec.strategy.signalApi.port`` with housekeeping (and, on paper, the market advancing with the
clock and the scheduled strategy) in the background, until SIGTERM: it stops accepting, lets
in-flight requests finish, closes the journal and the broker, and exits 0.
``--signals N`` instead trades N deterministic synthetic signals on the paper broker and exits (the crash tests).
``kubequant run --replay`` builds on the same ``TradingRuntime``. ``prepare`` (qlib and the bars:
seconds) is split from ``TradingRuntime.start`` (the journal and the broker: milliseconds) so a
restart after a crash is quick and the crash test can fork many lives from one prepared parent.
See docs/trading.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import logging
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import yaml

from kubequant.api.live import BrokerType, LiveTradingSession, TradingState
from kubequant.api.risk import RiskPolicy
from kubequant.errors import BrokerError, ConfigError, KubequantError
from kubequant.manifests import load_resources
from kubequant.workloads.data.bundle import resolve_bundle
from kubequant.workloads.trading.adapters.base import Broker
from kubequant.workloads.trading.adapters.factory import build_broker, build_price_source
from kubequant.workloads.trading.adapters.paper.broker import PaperBroker
from kubequant.workloads.trading.adapters.paper.market import QlibMarket
from kubequant.workloads.trading.execution.journal import Journal
from kubequant.workloads.trading.execution.oms import OrderManager
from kubequant.workloads.trading.execution.reconcile import poll
from kubequant.workloads.trading.execution.recovery import RecoveryReport, recover
from kubequant.workloads.trading.model.signals import SyntheticSignals, plan_orders
from kubequant.workloads.trading.node import metrics
from kubequant.workloads.trading.node.collector import SurvivorFreezer
from kubequant.workloads.trading.node.live_quality import (
    LiveQuality,
    RollingRankIc,
    feed_quality,
    paper_bar_quality,
)
from kubequant.workloads.trading.node.scheduled import Rebalancer, ScoreBook, load_scores, wall_rebalance
from kubequant.workloads.trading.risk.control import PolicyTracker, document_generation, set_kill_switch
from kubequant.workloads.trading.risk.engine import RiskEngine
from kubequant.workloads.trading.risk.policy import FileWatcher, PolicyWatcher, load_policy
from kubequant.workloads.trading.risk.trading_state import RuntimeLock

log = logging.getLogger(__name__)
EXIT_HALTED = 3  # recovery failed closed: no strategy may start
DEFAULT_SECRETS_DIR = Path("/var/run/secrets/kubequant/broker")  # the credentials Secret, one file per key
# The interpreter's switch interval while the runtime runs (seconds; Python's default is 5 ms). The
# journal's writer needs the GIL between its fsyncs, beside the event loop and the paper venue's
# worker; a thread that waits for it waits up to this long per hand-over, and with three threads
# those waits queued up: 20-30 ms gaps between two group commits while a bar was dealt.
SWITCH_INTERVAL = 0.0005


# After a failed journal write the pod exits (and its restart recovers) once the journal's volume has
# this much free: room for the restart's recovery and some trading, not just for the next page.
JOURNAL_ROOM_BYTES = 16 * 1024 * 1024

# A venue's prices are checked for gaps at most this often (its refresh is faster; the check is O(universe)).
QUALITY_FEED_SECONDS = 60.0


class RefreshedPrices(Protocol):
    """A price source fed from a market data API (Alpaca's): a cache the housekeeping tick refreshes."""

    def last_price(self, instrument: str) -> Decimal | None: ...

    def watch(self, *symbols: str) -> None: ...

    @property
    def watched(self) -> tuple[str, ...]: ...

    async def refresh(self) -> int: ...

    def refresh_soon(self) -> None: ...

    def close(self) -> None: ...


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
    host: str = "0.0.0.0"  # the signal API's bind address
    port: int | None = None  # override of spec.strategy.signalApi.port (0 picks a free port)
    token_file: Path | None = None  # the mounted Secret key with the bearer token
    tick_seconds: float = 1.0  # housekeeping interval: policy, kill switch, fills, account, state
    bar_seconds: float | None = None  # the paper market moves one bar every this many seconds; 0 never
    # The broker's credentials Secret, mounted as a folder (one file per key); None: the environment.
    secrets_dir: Path | None = None
    # On a cluster: the pod's API credentials (projected token, CA, namespace); the runtime then follows
    # its session (kill switch) and RiskPolicy through the API and reports status (cluster.py).
    api_dir: Path | None = None
    termination_log: Path | None = None  # where a failed start leaves its structured error for the operator
    status_seconds: float = 5.0  # the status report: changes at most this often (the trading state at once)
    heartbeat_seconds: float = 60.0  # an unchanged status is written this often

    @property
    def paper(self) -> bool:
        """Whether the session trades on the built-in paper broker (over qlib's bars)."""
        return self.session.spec.broker.type == BrokerType.PAPER

    @property
    def bar_interval(self) -> float:
        """Seconds per paper bar: the flag, else a day over spec.replay.speed, else a day."""
        if self.bar_seconds is not None:
            return self.bar_seconds
        replay = self.session.spec.replay
        return 86400 / replay.speed if replay is not None and replay.speed > 0 else 86400.0

    @property
    def api_port(self) -> int:
        """The signal API's port: the flag, else spec.strategy.signalApi.port, else 8080."""
        if self.port is not None:
            return self.port
        api = self.session.spec.strategy.signal_api
        return api.port if api is not None else 8080

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


def session_document(path: Path | None) -> dict[str, Any] | None:
    """The first LiveTradingSession document of a manifest file, as plain data (None if unreadable)."""
    return _document(path, "LiveTradingSession")


def policy_identity(path: Path, default_name: str) -> tuple[str, int | None]:
    """The name and generation of the RiskPolicy in a policy file (the operator writes both)."""
    doc = _document(path, "RiskPolicy")
    meta = (doc or {}).get("metadata") or {}
    return str(meta.get("name") or default_name), document_generation(doc)


def _document(path: Path | None, kind: str) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        docs = list(yaml.safe_load_all(Path(path).read_text()))
    except (OSError, yaml.YAMLError):
        return None
    return next((d for d in docs if isinstance(d, dict) and d.get("kind") == kind), None)


def bundle_path(session: LiveTradingSession, override: Path | None = None) -> Path:
    """The qlib bundle of the session: an override, ``spec.data.path``, or the cached sample."""
    return resolve_bundle(session.spec.data, override, override_flag="--data")


def prepare(cfg: RuntimeConfig, *, init: bool = True) -> QlibMarket:
    """Initialise qlib on the bundle and load the bars into qlib's Exchange (the slow part of a start).

    ``init=False`` when the caller initialised qlib itself (with an experiment manager, to train a model).
    """
    import qlib
    from qlib.data import D

    from kubequant.workloads.data.bars import DATASET_PROVIDER

    spec = cfg.session.spec
    if init:
        qlib.init(
            provider_uri=str(bundle_path(cfg.session, cfg.data_path)),
            region=spec.data.region,
            kernels=1,
            logging_level=logging.WARNING,
            expression_cache=None,
            dataset_cache=None,
            # raw fields (the Exchange's quote, the bars) read straight from the .bin files: same frames
            dataset_provider=DATASET_PROVIDER,
        )
    if spec.replay is not None and spec.replay.period is not None:
        start, end = spec.replay.period.split("..")
    else:
        calendar = D.calendar(freq="day")
        start, end = str(calendar[0].date()), str(calendar[-1].date())
    return QlibMarket.load(spec.exchange, spec.universe.resolved_market(), start, end)


def refuse_paper_only(session: LiveTradingSession) -> None:
    """A real broker's session may not use what needs the paper broker's bars; ConfigError names the field."""
    spec = session.spec
    kind = str(spec.broker.type)
    if spec.replay is not None:
        raise ConfigError(
            f"replay deals historical bars on the paper broker, not on broker type {kind}",
            where="spec.replay",
            fix="remove spec.replay, or set spec.broker.type: paper",
        )
    if spec.strategy.scheduled is not None:
        raise ConfigError(
            f"the scheduled strategy runs on the paper broker only for now (its scores, calendar and "
            f"tradability come from the qlib bundle), not on broker type {kind}",
            where="spec.strategy.scheduled",
            fix="drive the session through spec.strategy.signalApi, or set spec.broker.type: paper",
        )


class TradingRuntime:
    """The components of one session, wired together; ``start`` connects and recovers before anything trades.

    ``market`` (qlib's bars) is the paper broker's; a real broker's session has None and takes its
    last prices from the venue's market data (``prices``), refreshed by ``tick``.
    """

    def __init__(self, cfg: RuntimeConfig, market: QlibMarket | None = None) -> None:
        spec = cfg.session.spec
        self.cfg = cfg
        if not cfg.paper:
            refuse_paper_only(cfg.session)
        self.broker: Broker = build_broker(
            cfg.session, market=market, record_path=cfg.broker_path, secrets_dir=cfg.secrets_dir
        )
        self.paper = self.broker if isinstance(self.broker, PaperBroker) else None
        self.prices = build_price_source(cfg.session, self.broker, secrets_dir=cfg.secrets_dir)
        # A market data feed (not the paper broker's own bars) is refreshed by the housekeeping tick.
        self.feed: RefreshedPrices | None = None if self.paper is not None else self.prices  # type: ignore[assignment]
        self.journal = Journal(cfg.journal_path)
        self.risk = RiskEngine.for_session(load_policy(cfg.policy_path), spec)
        self.oms = OrderManager(cfg.session.metadata.name, self.journal, self.broker, self.risk, self.prices)
        self.policy_watcher = PolicyWatcher(cfg.policy_path, self.risk)
        self.session_watcher = FileWatcher(cfg.session_path) if cfg.session_path else None
        name, generation = policy_identity(cfg.policy_path, spec.risk_policy_ref.name)
        self.policy = PolicyTracker(self.oms, name, generation)
        # The newest session generation applied (the API may be ahead of the mounted file).
        self.session_generation: int | None = document_generation(session_document(cfg.session_path))
        self.connected_equity: Decimal | None = None  # a real broker's equity when this process connected
        self.listed: frozenset[str] | None = None  # what a real broker lets the account trade (read at start)
        self.live_ic = RollingRankIc()
        self.quality = LiveQuality()  # the latest data quality and live rank IC, for the status
        self.collector = SurvivorFreezer()  # when the garbage collector runs (each tick)
        self._quality_due: object = None  # the paper bar, or the feed's time slot, last measured

    async def start(self) -> RecoveryReport:
        """Connect to the broker, replay the journal and reconcile; ``oms.ready`` says whether to trade."""
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        await self.connect()
        if self.feed is not None:
            await self.feed.refresh()  # the universe's prices, before the first signal can ask
        report = await recover(self.oms)
        if self.feed is not None:
            self.feed.watch(*self.oms.state.position_quantities())
            self.feed.refresh_soon()
        return report

    async def connect(self) -> None:
        """Check a real broker's credentials and account (``spec.account``) before recovery reads it."""
        spec = self.cfg.session.spec
        try:
            account = await self.broker.connect(spec.account)
        except ConfigError:
            raise  # a refused key or another account's key: the error names the Secret or spec.account
        except BrokerError as err:
            raise BrokerError(
                f"cannot connect to the {spec.broker.type!s} broker: {err}",
                where="spec.broker.endpoint" if spec.broker.endpoint else "spec.broker",
                fix="check the endpoint and the pod's network egress; the pod retries when restarted",
            ) from err
        if account is None:
            return  # the paper broker: no credentials, no listing
        self.connected_equity = account.equity
        log.info("connected to %s account %s: equity %s", str(spec.broker.type), spec.account, account.equity)
        try:
            self.listed = await self.broker.listed_instruments()
        except BrokerError as err:
            raise BrokerError(
                f"cannot read the instruments the {spec.broker.type!s} broker lists: {err}",
                where="spec.broker",
                fix="check the broker's API and the pod's network egress; the pod retries when restarted",
            ) from err
        if self.listed is not None:
            log.info("the broker lists %d tradable instruments", len(self.listed))

    def knows(self) -> Callable[[str], bool]:
        """The signal API's instrument check: the paper market's instruments; for a real broker, what it
        lists as tradable (read at start), within the session's universe when it names one."""
        if self.paper is not None:
            return self.paper.market.knows
        universe = self.cfg.session.spec.universe.instruments
        allowed = frozenset(universe) if universe else None

        def listed(instrument: str) -> bool:
            # Before the start has read the listing nothing trades (the API answers 503 meanwhile).
            return (
                self.listed is not None
                and instrument in self.listed
                and (allowed is None or instrument in allowed)
            )

        return listed

    def instruments(self) -> list[str] | None:
        """What the signal API takes as instruments, listed: the paper market's, or the venue's tradable
        ones (within the session's universe when it names one); None before the start has read them."""
        if self.paper is not None:
            return list(self.paper.market.instruments)
        if self.listed is None:
            return None
        universe = frozenset(self.cfg.session.spec.universe.instruments or ())
        return sorted(i for i in self.listed if not universe or i in universe)

    def lot(self) -> Decimal:
        """Shares per lot at the paper market (qlib's trade unit), else 1."""
        unit = getattr(self.paper.market.exchange, "trade_unit", None) if self.paper is not None else None
        return Decimal(str(int(unit))) if unit else Decimal(1)

    def tradable(self, instrument: str) -> bool:
        """Whether ``instrument`` trades at the paper market's current bar (not suspended, not at a limit).

        The scheduled strategy's tradability test, as qlib's TopkDropoutStrategy asks the Backtest's exchange.
        A real broker's instrument is tradable when it has a last price.
        """
        broker = self.paper
        if broker is None:
            return self.prices.last_price(instrument) is not None
        market = broker.market
        if not market.knows(instrument) or broker.exhausted:
            return False
        t = market.bar_time(broker.bar)
        return bool(market.exchange.is_stock_tradable(stock_id=instrument, start_time=t, end_time=t))

    def rebalancer(self, scores: ScoreBook) -> Rebalancer | None:
        """The scheduled strategy over ``scores``; None when the session has none."""
        strategy = self.cfg.session.spec.strategy.scheduled
        if strategy is None:
            return None
        return Rebalancer.for_strategy(self.oms, strategy, scores, lot=self.lot(), tradable=self.tradable)

    async def tick(self) -> None:
        """The periodic housekeeping: policy and kill switch, fills, in-flight orders, account, trading state."""
        changed = self.policy_watcher.changed_policy()
        if changed is not None:
            name, generation = policy_identity(self.cfg.policy_path, self.policy.name)
            if generation is None or self.policy.generation is None or generation >= self.policy.generation:
                await self.policy.apply(changed, source="file", generation=generation, name=name)
        if self.session_watcher is not None and self.session_watcher.changed():
            try:
                session, _ = read_session(self.session_watcher.path)
            except KubequantError as err:
                log.error("ignoring the changed session file: %s", err.one_line())
            else:
                generation = document_generation(session_document(self.session_watcher.path))
                if self.saw_session(generation):  # not older than what the API delivered
                    await set_kill_switch(self.oms, session.spec.halted, source="file", generation=generation)
        if self.feed is not None:
            # Held names keep their prices; the refresh runs on a worker thread, never on this loop.
            self.feed.watch(*self.oms.state.position_quantities())
            self.feed.refresh_soon()
        await poll(self.oms)  # journals the new state, and a halt cancels the open orders
        self.record_data_age()
        await self.record_data_quality()
        # What survived until now is the session's state (orders, fills, positions): frozen, the
        # collector's full collections walk only what came since the last tick; now and then, outside
        # trading hours, everything is collected so that cycles which died frozen are freed (collector.py).
        self.collector.tick(in_window=self.risk.in_trading_window(self.oms.clock.now()))

    def record_data_age(self) -> None:
        """kubequant_last_bar_timestamp_seconds and whether the trading window is open (the staleness alert's inputs)."""
        newest = getattr(self.prices, "newest_bar_time", None)
        when = newest() if newest is not None else None
        if when is not None:
            if when.tzinfo is None:  # a bundle's bar: the exchange's local time
                when = when.replace(tzinfo=self.risk.exchange_tz)
            metrics.record_bar(when.timestamp(), in_window=self.risk.in_trading_window(self.oms.clock.now()))

    async def record_data_quality(self) -> None:
        """kubequant_data_missing_ratio and kubequant_data_instruments_missing, once per new bar (paper)
        or per feed refresh period, measured on a worker thread (O(universe): never on the signal path)."""
        if self.paper is not None:
            bar, market = self.paper.bar, self.paper.market
            if bar == self._quality_due or not 0 <= bar < len(market.calendar):
                return
            self._quality_due = bar
            t = market.bar_time(bar)
            quality = await asyncio.to_thread(paper_bar_quality, market.exchange, market.instruments, t)
        elif self.feed is not None:
            slot = int(time.monotonic() // QUALITY_FEED_SECONDS)
            if slot == self._quality_due:
                return
            self._quality_due = slot
            quality = await asyncio.to_thread(feed_quality, self.feed.last_price, self.feed.watched)
        else:
            return
        self.quality.bar = quality
        metrics.record_data_quality(quality.missing_ratio, quality.instruments_missing)

    def status_fields(self) -> dict[str, Any]:
        """The status fields the runtime knows besides the OMS: the policy generation it enforces, the
        latest data quality, the live rank IC (snake_case, as LiveTradingSessionStatus takes them)."""
        out = self.quality.status()
        if self.policy.generation is not None:
            out["applied_policy_generation"] = self.policy.generation
        return out

    def observe_day(self, day: dt.date, scores: ScoreBook) -> None:
        """Day ``day``'s rebalance starts on the scores dated before it: update the live rolling rank IC."""
        latest = scores.latest_before(day)
        if latest is None:
            return
        value = self.live_ic.observe(day, latest[1], self.prices.last_price)
        if value is not None:
            self.quality.rank_ic = value
            metrics.LIVE_RANK_IC.set(value)

    def saw_session(self, generation: int | None) -> bool:
        """Record the session generation a change came from; False when it is older than one already applied."""
        if (
            generation is not None
            and self.session_generation is not None
            and generation < self.session_generation
        ):
            return False
        if generation is not None:
            self.session_generation = generation
        return True

    def close(self) -> None:
        """Close the journal, the broker (its record or its connections) and the market data feed."""
        self.journal.close()
        self.broker.close()
        if self.feed is not None:
            self.feed.close()

    async def run_synthetic(self) -> int:
        """Send ``cfg.signals`` synthetic signals, resuming after the last one the journal has (paper only)."""
        cfg, oms, broker = self.cfg, self.oms, self.paper
        if broker is None:
            raise ConfigError(
                "synthetic signals need the paper broker", where="--signals", fix="drop --signals"
            )
        source = SyntheticSignals(broker.market.instruments, cfg.signal_seed)
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
            if (k + 1) % cfg.advance_every == 0 and not broker.exhausted:
                broker.advance()
            if (k + 1) % cfg.poll_every == 0:
                await self.tick()
        return sent


async def run(
    cfg: RuntimeConfig, market: QlibMarket | None, on_ready: Callable[[RecoveryReport], None] | None = None
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


class Pod:
    """The serving life of a runtime: the signal API, the background loops, and a graceful stop."""

    def __init__(
        self, cfg: RuntimeConfig, market: QlibMarket | None, scores: ScoreBook | None = None
    ) -> None:
        self.cfg = cfg
        self.runtime = TradingRuntime(cfg, market)
        self.scores = scores
        self.stopping = asyncio.Event()
        self.exit_code = 0
        self.failure: str | None = None  # why the start failed closed (for the termination message)
        self._bar: tuple[int, dt.datetime] | None = None  # the paper bar in trade and when it opened
        self._failed_logged = False  # the OMS's failure was logged
        self._failed_shown = False  # ... and, the journal's volume being full, shown in the metrics

    async def run(self, token: str, on_listening: Callable[[int], None] | None = None) -> int:
        """Serve until SIGTERM (or ``stop``); the exit code."""
        from kubequant.workloads.trading.node.signal_api import SignalService, build_app, serve

        runtime, cfg = self.runtime, self.cfg
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop, sig.name)
        service = SignalService.for_runtime(runtime)
        # Up before recovery, so /healthz answers and /readyz says 503 while the journal replays.
        runner, port = await serve(build_app(service, token), cfg.host, cfg.api_port)
        log.info("signal API listening on %s:%d", cfg.host, port)
        if on_listening is not None:
            on_listening(port)
        tasks: list[asyncio.Task[None]] = []
        try:
            report = await runtime.start()
            if not runtime.oms.ready:
                log.error("recovery failed closed, no strategy starts: %s", report.halted)
                self.failure = f"recovery failed closed, no strategy starts: {report.halted}"
                return EXIT_HALTED
            if runtime.connected_equity is not None:
                service.starting_equity = runtime.connected_equity  # a real account's pnl: since this start
            await runtime.policy.started()
            if cfg.api_dir is not None:
                link = self.cluster_link(service)
                tasks.append(asyncio.create_task(link.run(self.stopping), name="cluster link"))
            rebalancer = runtime.rebalancer(self.scores) if self.scores is not None else None
            tasks.append(asyncio.create_task(self._every(cfg.tick_seconds, runtime.tick, "housekeeping")))
            if runtime.paper is not None and cfg.bar_interval > 0:
                tasks.append(
                    asyncio.create_task(self._every(cfg.bar_interval, self._advance, "paper market"))
                )
            if rebalancer is not None:
                step = min(1.0, float(rebalancer.interval) / 2 or 1.0)
                tasks.append(
                    asyncio.create_task(self._every(step, lambda: self._rebalance(rebalancer), "rebalance"))
                )
            log.info("trading: %s", runtime.risk.state.value)
            await self.stopping.wait()
        finally:
            # Stop accepting, let in-flight signals finish (aiohttp waits for running handlers), then the loops.
            await runner.cleanup()
            self.stopping.set()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            runtime.close()
            log.info("stopped; journal closed")
        return self.exit_code

    def cluster_link(self, service: Any) -> Any:
        """The link that follows the session and its RiskPolicy through the API and reports status."""
        from kubequant.workloads.trading.node.cluster import ApiCredentials, ClusterLink, KubeApi

        cfg, runtime = self.cfg, self.runtime
        assert cfg.api_dir is not None
        return ClusterLink(
            KubeApi(ApiCredentials.from_dir(cfg.api_dir)),
            runtime.oms,
            runtime.policy,
            lambda: self._durable_status(service),
            cfg.session.metadata.name,
            runtime.policy.name,
            on_session=runtime.saw_session,
            status_seconds=cfg.status_seconds,
            heartbeat_seconds=cfg.heartbeat_seconds,
        )

    async def _durable_status(self, service: Any) -> dict[str, Any]:
        body, _ = await self.runtime.oms.read_durable(service.status)
        return body  # type: ignore[no-any-return]

    def stop(self, why: str = "stop", code: int = 0) -> None:
        """Begin a graceful stop."""
        if not self.stopping.is_set():
            log.info("%s: stopping", why)
            self.exit_code = code
            self.stopping.set()

    async def _every(self, seconds: float, step: Callable[[], Awaitable[Any]], what: str) -> None:
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), timeout=seconds)
                return
            except TimeoutError:
                pass
            if self.runtime.oms.failed:
                self._failed_closed()  # nothing more runs: every step would act on an unjournaled state
                continue
            try:
                await step()
            except Exception:
                log.exception("%s failed", what)
            if self.runtime.oms.failed:
                self._failed_closed()

    def _failed_closed(self) -> None:
        """The OMS stopped (a journal write failed): trade nothing, say so, and exit once a restart can recover.

        The state in memory is then ahead of the journal, so only a restart (which rebuilds it from
        the journal) may trade again; but on a full volume a restart could not write either and would
        only crash-loop out of sight. So the pod stays up, fail-closed, while the volume has no room:
        the signal API answers 503 naming the journal and /readyz 503, kubequant_trading_state says
        HALTED (KubequantSessionHalted fires) with the condition journal_write_failed. Once the volume
        has room again it exits 1, and its restart recovers from the journal.
        """
        if not self._failed_logged:
            self._failed_logged = True
            log.error("the OMS stopped; trading nothing until a restart: %s", self.runtime.oms.failed)
        try:
            usage = shutil.disk_usage(self.cfg.journal_path.parent)
            room = usage.free >= min(JOURNAL_ROOM_BYTES, usage.total // 4)  # a small volume: a quarter of it
        except OSError:
            room = True  # the volume cannot even be read: a restart is all that is left
        if room:
            self.stop("the OMS failed", 1)
        elif not self._failed_shown:  # the journal's volume is full: that is why the OMS stopped
            self._failed_shown = True
            metrics.record_journal_failed(tuple(s.value for s in TradingState))

    async def _advance(self) -> None:
        broker = self.runtime.paper
        if broker is None or broker.exhausted:
            return
        await broker.advance_async()  # deals the bar in chunks, giving the loop back to signals
        if broker.exhausted:
            log.warning("the paper market has no more bars")
        await self.runtime.tick()

    async def _rebalance(self, rebalancer: Rebalancer) -> None:
        runtime = self.runtime
        if runtime.risk.state is TradingState.HALTED:
            return
        now = runtime.oms.clock.now()
        when = self.rebalance_window(now)
        if when is not None:
            if when[1] <= now:
                runtime.observe_day(when[0], rebalancer.scores)
            await rebalancer.run_due(*when, now)

    def rebalance_window(self, now: dt.datetime) -> tuple[dt.date, dt.datetime] | None:
        """The trading day and when its rebalance starts.

        Paper: each bar is a trading day, and its rebalance starts as the bar opens (``rebalanceAt``
        is for the exchange's clock). A venue on the wall clock: weekdays at ``rebalanceAt``.
        """
        strategy = self.cfg.session.spec.strategy.scheduled
        assert strategy is not None
        broker = self.runtime.broker
        if isinstance(broker, PaperBroker):
            if broker.exhausted:
                return None
            if self._bar is None or self._bar[0] != broker.bar:
                self._bar = (broker.bar, now)
            return broker.market.bar_time(broker.bar).date(), self._bar[1]
        return wall_rebalance(now, self.cfg.session.spec.timezone, strategy.rebalance_at)


def session_token(cfg: RuntimeConfig) -> str:
    """The bearer token from the mounted Secret; a scheduled-only session without one gets a random token."""
    from kubequant.workloads.trading.node.signal_api import load_token

    try:
        return load_token(cfg.token_file)
    except ConfigError:
        if cfg.session.spec.strategy.signal_api is not None or cfg.token_file is not None:
            raise
        log.warning("no signal API token: the /v1 routes stay closed (a random token)")
        return secrets.token_urlsafe(24)


def parse_args(argv: list[str] | None) -> RuntimeConfig:
    """The RuntimeConfig from the command line."""
    p = argparse.ArgumentParser(prog="kubequant-trading-runtime", description=__doc__.splitlines()[0])
    p.add_argument("--session", type=Path, required=True, help="manifest with the LiveTradingSession")
    p.add_argument("--policy", type=Path, help="RiskPolicy file (watched); default: the session file")
    p.add_argument("--state-dir", type=Path, required=True, help="the session's volume (journal)")
    p.add_argument("--broker-record", type=Path, help="the paper broker's SQLite file")
    p.add_argument(
        "--secrets-dir",
        type=Path,
        default=DEFAULT_SECRETS_DIR,
        help=f"the broker's credentials Secret, one file per key (default {DEFAULT_SECRETS_DIR}; "
        "keys missing there come from the environment)",
    )
    p.add_argument("--data", type=Path, help="qlib bundle path (overrides spec.data)")
    p.add_argument("--host", default="0.0.0.0", help="the signal API's bind address (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="the signal API's port (default spec.strategy.signalApi.port)")
    p.add_argument(
        "--token-file",
        type=Path,
        help="the bearer token's Secret key file (default $KUBEQUANT_SIGNAL_TOKEN_FILE)",
    )
    p.add_argument("--tick-seconds", type=float, default=1.0, help="housekeeping interval (default 1)")
    p.add_argument(
        "--bar-seconds",
        type=float,
        help="seconds per paper bar; 0 never advances (default 86400 / spec.replay.speed, else 86400)",
    )
    p.add_argument(
        "--api-dir",
        type=Path,
        help="on a cluster: the pod's API credentials (token, ca.crt, namespace); the runtime then follows "
        "its session and RiskPolicy through the API and reports its status",
    )
    p.add_argument(
        "--termination-log", type=Path, help="where a failed start leaves its error for the operator"
    )
    p.add_argument(
        "--status-seconds",
        type=float,
        default=5.0,
        help="status report: changes at most this often (default 5)",
    )
    p.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=60.0,
        help="status report: unchanged, this often (default 60)",
    )
    p.add_argument("--signals", type=int, default=0, help="send N synthetic signals and exit (no API)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic signals")
    p.add_argument("--advance-every", type=int, default=5, help="synthetic signals per paper bar")
    a = p.parse_args(argv)
    session, _ = read_session(a.session)
    for flag, value in (("--tick-seconds", a.tick_seconds), ("--bar-seconds", a.bar_seconds)):
        if (value is not None and value < 0) or (flag == "--tick-seconds" and value == 0):
            raise ConfigError(
                f"{flag} {value} is not a positive number of seconds", where=flag, fix="give seconds > 0"
            )
    if a.signals > 0 and session.spec.broker.type != BrokerType.PAPER:
        raise ConfigError(
            f"synthetic signals trade on the paper broker, not on broker type {session.spec.broker.type!s}",
            where="--signals",
            fix="drop --signals, or use a session with spec.broker.type: paper",
        )
    if a.port is not None and not 0 <= a.port <= 65535:
        raise ConfigError(
            f"port {a.port} is out of range", where="--port", fix="give 0-65535 (0: any free port)"
        )
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
        host=a.host,
        port=a.port,
        token_file=a.token_file,
        tick_seconds=a.tick_seconds,
        bar_seconds=a.bar_seconds,
        secrets_dir=a.secrets_dir,
        api_dir=a.api_dir,
        termination_log=a.termination_log,
        status_seconds=a.status_seconds,
        heartbeat_seconds=a.heartbeat_seconds,
    )


def session_scores(cfg: RuntimeConfig, market: QlibMarket) -> ScoreBook | None:
    """The scheduled strategy's scores (None without one), read once at start."""
    strategy = cfg.session.spec.strategy.scheduled
    if strategy is None:
        return None
    period = (str(market.calendar[0].date()), str(market.calendar[-1].date()))
    return load_scores(strategy.signal, market.instruments, period, lambda stage, msg: log.info("%s", msg))


def termination_writer(argv: list[str]) -> Callable[[str], None]:
    """Writes a failed start's reason where the operator reads it (--termination-log), redacted; never logs."""
    path: Path | None = None
    for i, arg in enumerate(argv):
        if arg == "--termination-log" and i + 1 < len(argv):
            path = Path(argv[i + 1])
        elif arg.startswith("--termination-log="):
            path = Path(arg.partition("=")[2])

    def leave(text: str) -> None:
        if path is None or not path.parent.exists():
            return
        from kubequant.redaction import redact

        try:
            path.write_text(json.dumps({"error": redact(text, limit=2048)}))
        except OSError as err:
            log.warning("cannot write the termination message: %s", err)

    return leave


def main(argv: list[str] | None = None) -> int:
    """Entry point of the trading process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    leave = termination_writer(argv)
    try:
        cfg = parse_args(argv)
        with RuntimeLock(cfg.state_dir):
            if cfg.signals > 0:
                return asyncio.run(run(cfg, prepare(cfg)))
            token = session_token(cfg)
            if not cfg.paper:
                refuse_paper_only(cfg.session)  # before anything slow
            # Only the paper broker deals bars; a real broker's session needs no qlib bundle.
            market = prepare(cfg) if cfg.paper else None
            scores = session_scores(cfg, market) if market is not None else None
            # qlib and pandas leave ~200k long-lived objects; frozen, a full collection no longer
            # walks them (it paused the signal path ~100 ms at a time).
            gc.collect()
            gc.freeze()
            pod = Pod(cfg, market, scores)
            code = asyncio.run(pod.run(token))
            if code == EXIT_HALTED and pod.failure:
                leave(pod.failure)
            return code
    except KubequantError as err:
        log.error("%s", err.one_line())
        leave(err.one_line())
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
