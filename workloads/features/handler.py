"""Alpha158/Alpha360 handlers whose features come from the compiled engine.

Drop-in subclasses of qlib's handlers: the same kwargs, the same feature and label
configuration (inherited from qlib, so the columns, names and order are qlib's), the same
processors (qlib's, run by ``DataHandlerLP``; qlib's ProcessInf answers a frame with no ±inf at
once: ``processors.py``). Only the data loader differs:
:class:`~kubequant.workloads.features.loader.CompiledDataLoader`, which falls back to qlib's
engine for anything it does not reproduce exactly.
"""

from __future__ import annotations

from typing import Any

from qlib.contrib.data import handler as qlib_handler
from qlib.data.dataset.handler import DataHandlerLP

from kubequant.workloads.features.processors import with_fast_processors

LOADER_MODULE = "kubequant.workloads.features.loader"


def _loader_config(
    feature: Any, label: Any, filter_pipe: Any, freq: str, inst_processors: Any
) -> dict[str, Any]:
    return {
        "class": "CompiledDataLoader",
        "module_path": LOADER_MODULE,
        "kwargs": {
            "config": {"feature": feature, "label": label},
            "filter_pipe": filter_pipe,
            "freq": freq,
            "inst_processors": inst_processors,
        },
    }


def _init_compiled(
    handler: DataHandlerLP,
    feature: Any,
    default_infer: list[Any],
    instruments: Any,
    start_time: Any,
    end_time: Any,
    freq: str,
    infer_processors: Any,
    learn_processors: Any,
    fit_start_time: Any,
    fit_end_time: Any,
    filter_pipe: Any,
    inst_processors: Any,
    kwargs: dict[str, Any],
) -> None:
    """What qlib's Alpha158/Alpha360 ``__init__`` does, with the compiled loader in place of qlib's."""
    # qlib's defaults, copied so that a mutable default is never shared between instances.
    infer = list(default_infer) if infer_processors is None else infer_processors
    learn = list(qlib_handler._DEFAULT_LEARN_PROCESSORS) if learn_processors is None else learn_processors
    infer = with_fast_processors(qlib_handler.check_transform_proc(infer, fit_start_time, fit_end_time))
    learn = with_fast_processors(qlib_handler.check_transform_proc(learn, fit_start_time, fit_end_time))
    label = kwargs.pop("label", handler.get_label_config())  # type: ignore[attr-defined]
    loader = _loader_config(feature, label, filter_pipe, freq, inst_processors)
    DataHandlerLP.__init__(
        handler,
        instruments=instruments,
        start_time=start_time,
        end_time=end_time,
        data_loader=loader,
        infer_processors=infer,
        learn_processors=learn,
        **kwargs,
    )


class Alpha158(qlib_handler.Alpha158):
    """qlib's Alpha158, computed by the compiled engine."""

    def __init__(
        self,
        instruments: Any = "csi500",
        start_time: Any = None,
        end_time: Any = None,
        freq: str = "day",
        infer_processors: Any = None,
        learn_processors: Any = None,
        fit_start_time: Any = None,
        fit_end_time: Any = None,
        process_type: str = DataHandlerLP.PTYPE_A,
        filter_pipe: Any = None,
        inst_processors: Any = None,
        **kwargs: Any,
    ) -> None:
        _init_compiled(
            self,
            self.get_feature_config(),
            [],  # qlib's Alpha158 infers on the raw features
            instruments,
            start_time,
            end_time,
            freq,
            infer_processors,
            learn_processors,
            fit_start_time,
            fit_end_time,
            filter_pipe,
            inst_processors,
            {"process_type": process_type, **kwargs},
        )


class Alpha158vwap(Alpha158):
    """qlib's Alpha158vwap (the label on vwap), computed by the compiled engine."""

    def get_label_config(self) -> tuple[list[str], list[str]]:
        return ["Ref($vwap, -2)/Ref($vwap, -1) - 1"], ["LABEL0"]


class Alpha360(qlib_handler.Alpha360):
    """qlib's Alpha360 (60 days of prices and volume over the latest), computed by the compiled engine.

    Its own defaults differ from Alpha158's: qlib runs ProcessInf, ZScoreNorm and Fillna at inference
    unless told otherwise, and takes no ``process_type``.
    """

    def __init__(
        self,
        instruments: Any = "csi500",
        start_time: Any = None,
        end_time: Any = None,
        freq: str = "day",
        infer_processors: Any = None,
        learn_processors: Any = None,
        fit_start_time: Any = None,
        fit_end_time: Any = None,
        filter_pipe: Any = None,
        inst_processors: Any = None,
        **kwargs: Any,
    ) -> None:
        _init_compiled(
            self,
            qlib_handler.Alpha360DL.get_feature_config(),
            qlib_handler._DEFAULT_INFER_PROCESSORS,
            instruments,
            start_time,
            end_time,
            freq,
            infer_processors,
            learn_processors,
            fit_start_time,
            fit_end_time,
            filter_pipe,
            inst_processors,
            kwargs,
        )


class Alpha360vwap(Alpha360):
    """qlib's Alpha360vwap (the label on vwap), computed by the compiled engine."""

    def get_label_config(self) -> tuple[list[str], list[str]]:
        return ["Ref($vwap, -2)/Ref($vwap, -1) - 1"], ["LABEL0"]
