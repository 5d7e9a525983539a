"""Thin kopf handlers: read, call the pure builders, create-or-adopt children, patch status.

Kinds register here and nowhere else: the operator imports every module of HANDLER_MODULES (which
registers its handlers with kopf), and each module's ``RBAC`` declares the API access its handlers
need (``kubequant.operator.rbac``; the chart's RBAC is tested against the union).
"""

HANDLER_MODULES: tuple[str, ...] = (
    "kubequant.operator.handlers.backtest",
    "kubequant.operator.handlers.training",
    "kubequant.operator.handlers.session",
    "kubequant.operator.handlers.policy",
)
