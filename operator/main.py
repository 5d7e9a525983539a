"""`kubequant operator`: kopf with kubequant's handlers, settings, metrics and health endpoint."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubequant.operator import persistence
from kubequant.operator.config import OperatorConfig
from kubequant.version import API_GROUP

log = logging.getLogger(__name__)


def configure(settings: kopf.OperatorSettings, cfg: OperatorConfig) -> None:
    """kopf settings: its bookkeeping in status.kopf (one write per reconcile), peering, posting."""
    settings.persistence.progress_storage = persistence.progress_storage()
    settings.persistence.diffbase_storage = persistence.diffbase_storage()
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    settings.posting.level = logging.INFO
    settings.peering.name = cfg.peering
    settings.peering.priority = cfg.effective_priority()
    settings.peering.lifetime = cfg.peering_lifetime_seconds
    settings.peering.standalone = cfg.standalone
    # Replicas must never run unpeered: a missing peering CRD pauses the operator instead.
    settings.peering.mandatory = not cfg.standalone
    settings.peering.clusterwide = not cfg.namespaces
    settings.execution.max_workers = 32
    # Handle a burst of new objects at once rather than waiting for more events about each.
    settings.batching.batch_window = 0.01
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330


def run_operator(cfg: OperatorConfig) -> None:
    """Run until stopped (SIGTERM/SIGINT)."""
    from kubequant.operator import kube, memory, metrics, peering, rbac

    # Importing the handler modules registers them with kopf's default registry.
    rbac.handler_modules()

    kube.load_credentials()
    memory.start_trimming()
    # kopf pauses without a word while its peering objects are missing: say so, and how to get out.
    peering.start_warning_thread(cfg)

    @kopf.on.startup()
    def _startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, cfg)
        if cfg.metrics_port:
            metrics.serve(cfg.metrics_port)
        log.info(
            "kubequant operator: namespaces=%s priority=%s", cfg.namespaces or "all", cfg.effective_priority()
        )

    kopf.run(
        clusterwide=not cfg.namespaces,
        namespaces=cfg.namespaces,
        standalone=cfg.standalone or None,
        priority=cfg.effective_priority(),
        peering_name=None if cfg.standalone else cfg.peering,
        liveness_endpoint=f"http://0.0.0.0:{cfg.health_port}/healthz" if cfg.health_port else None,
        memo=kopf.Memo(config=cfg),
    )
