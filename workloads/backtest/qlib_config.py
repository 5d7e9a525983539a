"""A Backtest spec in qlib's own configuration vocabulary (class/module_path/kwargs dicts).

Pure: no qlib import, no I/O. The runner hands these dicts to qlib's ``init_instance_by_config``
and ``qlib.backtest.backtest``; the parity test builds the same run by hand from qlib's docs.
"""

from __future__ import annotations

from typing import Any

from kubequant.api.backtest import BacktestSpec, ExecutionEngine, ExecutorLevel, InlineModel
from kubequant.api.common import ClassReference
from kubequant.errors import ConfigError

# Where qlib keeps the classes people name without a module.
HANDLER_MODULE = "qlib.contrib.data.handler"
STRATEGY_MODULE = "qlib.contrib.strategy"
IMPACT_EXCHANGE_MODULE = "kubequant.workloads.backtest.impact_exchange"
MODEL_MODULES = {
    "LGBModel": "qlib.contrib.model.gbdt",
    "XGBModel": "qlib.contrib.model.xgboost",
    "CatBoostModel": "qlib.contrib.model.catboost_model",
    "LinearModel": "qlib.contrib.model.linear",
    "DEnsembleModel": "qlib.contrib.model.double_ensemble",
}
# Handlers kubequant computes with compiled kernels when a spec's engine is auto (docs/features.md).
COMPILED_HANDLERS = frozenset({"Alpha158", "Alpha158vwap", "Alpha360", "Alpha360vwap"})
COMPILED_HANDLER_MODULE = "kubequant.workloads.features"
# qlib's label for Alpha158/Alpha360: the return from the next day's close to the one after.
DEFAULT_LABEL = "Ref($close, -2) / Ref($close, -1) - 1"


def class_config(ref: ClassReference, default_module: str | None, field: str, **extra: Any) -> dict[str, Any]:
    """qlib's {class, module_path, kwargs} for a class reference; ``extra`` kwargs are defaults."""
    module = ref.module or default_module
    if module is None:
        raise ConfigError(
            f"no default module for class {ref.class_name!r}",
            where=f"{field}.module",
            fix="set module, e.g. qlib.contrib.model.gbdt",
        )
    return {"class": ref.class_name, "module_path": module, "kwargs": {**extra, **ref.kwargs}}


def handler_module(model: InlineModel) -> str:
    """Where an unqualified handler class comes from: the compiled Alpha158 under engine auto, else qlib."""
    if (
        model.engine == ExecutionEngine.AUTO
        and model.handler.module is None
        and model.handler.class_name in COMPILED_HANDLERS
    ):
        return COMPILED_HANDLER_MODULE
    return HANDLER_MODULE


def dataset_config(
    model: InlineModel, market: str | list[str], field: str = "spec.signal.model"
) -> dict[str, Any]:
    """qlib's DatasetH config: the handler over train..test, fitted on train, and the three segments."""
    seg = model.segments
    handler = class_config(
        model.handler,
        handler_module(model),
        f"{field}.handler",
        start_time=str(seg.train.start),
        end_time=str(seg.test.end),
        fit_start_time=str(seg.train.start),
        fit_end_time=str(seg.train.end),
        instruments=market,
    )
    return {
        "class": "DatasetH",
        "module_path": "qlib.data.dataset",
        "kwargs": {
            "handler": handler,
            "segments": {
                "train": (str(seg.train.start), str(seg.train.end)),
                "valid": (str(seg.valid.start), str(seg.valid.end)),
                "test": (str(seg.test.start), str(seg.test.end)),
            },
        },
    }


def model_config(model: InlineModel, field: str = "spec.signal.model") -> dict[str, Any]:
    """qlib's model config."""
    return class_config(model.model, MODEL_MODULES.get(model.model.class_name), f"{field}.model")


def strategy_config(spec: BacktestSpec) -> dict[str, Any]:
    """qlib's strategy config, without the signal (the runner adds it)."""
    if spec.strategy.custom is not None:
        return class_config(spec.strategy.custom, STRATEGY_MODULE, "spec.strategy.custom")
    td = spec.strategy.topk_dropout
    if td is None:
        from kubequant.api.backtest import TopkDropout

        td = TopkDropout()
    return {
        "class": "TopkDropoutStrategy",
        "module_path": STRATEGY_MODULE,
        "kwargs": {
            "topk": td.topk,
            "n_drop": td.n_drop,
            "risk_degree": td.risk_degree,
            "hold_thresh": td.hold_thresh,
            "only_tradable": td.only_tradable,
            "forbid_all_trade_at_limit": td.forbid_all_trade_at_limit,
        },
    }


RULE_STRATEGY_MODULE = "qlib.contrib.strategy.rule_strategy"
SLICING_MODULE = "kubequant.workloads.backtest.slicing"


def slicing_config(
    level: ExecutorLevel, market: str | list[str], field: str, expire_unfilled: bool = False
) -> dict[str, Any]:
    """qlib's config of the strategy that slices orders at one inner level.

    ``expire_unfilled`` (``spec.exchange.impact.onCap: expire``) makes TWAP/VWAP drop what a slice
    did not fill; by default the next slices make it up (carry), as qlib's TWAP does.
    """
    chosen = level.strategy
    if chosen.custom is not None:
        return class_config(chosen.custom, RULE_STRATEGY_MODULE, f"{field}.strategy.custom")
    if chosen.vwap is not None:
        return {
            "class": "ExpiringVWAPStrategy" if expire_unfilled else "VWAPStrategy",
            "module_path": SLICING_MODULE,
            "kwargs": {"lookback_days": chosen.vwap.lookback_days},
        }
    if chosen.sbb_ema is not None:
        return {
            "class": "SBBStrategyEMA",
            "module_path": RULE_STRATEGY_MODULE,
            "kwargs": {"instruments": market, "freq": "1min"},
        }
    if expire_unfilled:
        return {"class": "ExpiringTWAPStrategy", "module_path": SLICING_MODULE, "kwargs": {}}
    return {"class": "TWAPStrategy", "module_path": RULE_STRATEGY_MODULE, "kwargs": {}}


COMPILED_MODULE = "kubequant.workloads.backtest.compiled_slicing"
MINUTE_EXCHANGE_MODULE = "kubequant.workloads.backtest.minute_exchange"


def executor_config(spec: BacktestSpec) -> dict[str, Any]:
    """qlib's SimulatorExecutor config, wrapped in one NestedExecutor per inner level (outermost first).

    Inner levels under a daily one with built-in slicing run on kubequant's compiled executor instead
    (``compiled_slicing``; ``Executor.compiled_reason`` says when they do not).
    """
    slicings = spec.executor.compiled_slicing()
    if slicings is not None:
        impact = spec.exchange.impact
        level_kwargs = [
            {
                "frequency": level.frequency,
                "slicing": slicing,
                "lookback_days": level.strategy.vwap.lookback_days if level.strategy.vwap else 5,
            }
            for level, slicing in zip(spec.executor.levels or [], slicings, strict=True)
        ]
        return {
            "class": "CompiledSlicingExecutor",
            "module_path": COMPILED_MODULE,
            "kwargs": {
                "time_per_step": "day",
                "levels": level_kwargs,
                "instruments": spec.universe.resolved_market(),
                "expire_unfilled": impact is not None and impact.on_cap == "expire",
                "generate_portfolio_metrics": True,
                "trade_type": spec.executor.trade_type,
                "verbose": False,
            },
        }
    levels = spec.executor.levels or []
    config: dict[str, Any] = {
        "class": "SimulatorExecutor",
        "module_path": "qlib.backtest.executor",
        "kwargs": {
            "time_per_step": spec.executor.finest(),
            "generate_portfolio_metrics": True,
            "trade_type": spec.executor.trade_type,
            "verbose": False,
        },
    }
    market = spec.universe.resolved_market()
    impact = spec.exchange.impact
    expire = impact is not None and impact.on_cap == "expire"
    for index in reversed(range(len(levels))):
        step = spec.executor.frequency if index == 0 else levels[index - 1].frequency
        config = {
            "class": "NestedExecutor",
            "module_path": "qlib.backtest.executor",
            "kwargs": {
                "time_per_step": step,
                "inner_executor": config,
                "inner_strategy": slicing_config(
                    levels[index], market, f"spec.executor.levels[{index}]", expire
                ),
                "generate_portfolio_metrics": True,
                "indicator_config": {"show_indicator": False},
            },
        }
    return config


def engine_note(spec: BacktestSpec) -> str:
    """Which engine runs the inner levels, and why: one line for the run's output."""
    executor = spec.executor
    chain = " → ".join(
        [executor.frequency, *(f"{lv.frequency} {lv.strategy.slicing()}" for lv in executor.levels or [])]
    )
    reason = executor.compiled_reason()
    if reason is None:
        return f"{chain}: inner levels on the compiled engine (built-in slicing, qlib's rules)"
    return f"{chain}: inner levels on qlib's NestedExecutor ({reason})"


def exchange_kwargs(spec: BacktestSpec) -> dict[str, Any]:
    """``exchange_kwargs`` of qlib's ``backtest()``: Exchange kwargs, or an ImpactExchange config.

    With ``spec.exchange.impact`` set, qlib's ``get_exchange(exchange=...)`` builds the exchange from
    a class config and ignores the other keys, so the config carries every kwarg, period included.
    """
    out = plain_exchange_kwargs(spec)
    impact = spec.exchange.impact
    compiled = spec.executor.compiled_slicing() is not None
    if impact is None and not compiled:
        return out
    kwargs = {"start_time": str(spec.period.start), "end_time": str(spec.period.end), **out}
    if compiled:
        # A daily exchange quoting what the 1-minute one would, with the minutes kept for the compiled level.
        kwargs.update(freq="day", end_time=str(spec.period.end))
        name = "MinuteBackedExchange" if impact is None else "MinuteBackedImpactExchange"
        module = MINUTE_EXCHANGE_MODULE
    else:
        name, module = "ImpactExchange", IMPACT_EXCHANGE_MODULE
    if impact is not None:
        kwargs["impact"] = impact.model_dump(mode="json")
    return {"exchange": {"class": name, "module_path": module, "kwargs": kwargs}}


def plain_exchange_kwargs(spec: BacktestSpec) -> dict[str, Any]:
    """kwargs of qlib's Exchange (without the impact model)."""
    ex = spec.exchange
    out: dict[str, Any] = {
        "freq": "1min" if spec.executor.finest() != "day" else "day",
        "limit_threshold": ex.limit_threshold,
        "deal_price": ex.deal_price,
        "open_cost": ex.open_cost,
        # Stamp duty is a tax on sells: qlib's Exchange charges it as part of the close cost (so the
        # minimum cost applies to the sum, as with qlib's own 0.0015 that folds the duty in).
        "close_cost": ex.close_cost + ex.stamp_duty,
        "min_cost": ex.min_cost,
        "impact_cost": ex.impact_cost,
    }
    if ex.trade_unit is not None:
        out["trade_unit"] = ex.trade_unit
    if spec.executor.finest() != "day":
        # qlib loads quotes up to end_time as given: a bare date would drop the last day's minutes.
        out["end_time"] = f"{spec.period.end} 15:00:00"
    return out
