"""The kubequant API (group kubequant.io, version v1alpha1): the single source of the CRDs."""

from kubequant.api.backtest import Backtest, BacktestSpec, BacktestStatus
from kubequant.api.common import Condition
from kubequant.api.live import LiveTradingSession, LiveTradingSessionSpec, LiveTradingSessionStatus
from kubequant.api.resource import API_GROUP_VERSION, Resource
from kubequant.api.results import BacktestResults
from kubequant.api.risk import RiskPolicy, RiskPolicySpec, RiskPolicyStatus
from kubequant.api.training import TrainingJob, TrainingJobSpec, TrainingJobStatus

KINDS: dict[str, type[Resource]] = {
    cls.__crd__.kind: cls for cls in (Backtest, TrainingJob, LiveTradingSession, RiskPolicy)
}

__all__ = [
    "API_GROUP_VERSION",
    "KINDS",
    "Backtest",
    "BacktestResults",
    "BacktestSpec",
    "BacktestStatus",
    "Condition",
    "LiveTradingSession",
    "LiveTradingSessionSpec",
    "LiveTradingSessionStatus",
    "Resource",
    "RiskPolicy",
    "RiskPolicySpec",
    "RiskPolicyStatus",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
]
