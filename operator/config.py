"""The operator's configuration: one place, from flags or KUBEQUANT_* environment variables."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from kubequant.api.modules import module_allow_list
from kubequant.operator.builders.policy import WorkloadPolicy

DEFAULT_IMAGE = "ghcr.io/kubequant/kubequant:0.1.0"


class OperatorConfig(BaseSettings):
    """Settings of `kubequant operator`; every field is also the env var KUBEQUANT_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="KUBEQUANT_", extra="ignore")

    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Namespaces to watch (comma-separated in env); empty means all."
    )
    log_level: str = Field(
        "INFO", pattern=r"^(DEBUG|INFO|WARNING|ERROR)$", description="Log level of the operator."
    )
    metrics_port: int = Field(
        9090, ge=0, le=65535, description="Port of the Prometheus /metrics endpoint (0: off)."
    )
    health_port: int = Field(
        8081, ge=0, le=65535, description="Port of kopf's /healthz liveness endpoint (0: off)."
    )
    peering: str = Field("kubequant", description="kopf peering object name shared by the replicas.")
    standalone: bool = Field(False, description="Run without peering (a single replica, e.g. tests).")
    peering_lifetime_seconds: int = Field(
        30,
        ge=5,
        le=3600,
        description="How long a replica's peering record lives; a killed leader is replaced after it.",
    )
    peering_warning_seconds: float = Field(
        60,
        gt=0,
        description="While kopf waits for a missing peering object (no chart, no --standalone), repeat the "
        "WARNING that says so this often.",
    )
    priority: int = Field(0, description="kopf peering priority; the highest-priority replica is active.")
    priority_from_ordinal: bool = Field(
        False, description="Derive the priority from the pod name's StatefulSet ordinal: 1000 - ordinal."
    )
    pod_name: str | None = Field(
        None, description="This pod's name (downward API), for priority_from_ordinal."
    )
    workload_image: str = Field(DEFAULT_IMAGE, description="Image of the Job pods when a spec names none.")
    workload_image_pull_policy: str = Field(
        "Always",
        pattern=r"^(Always|IfNotPresent|Never)$",
        description="Pull policy of the Job pods' image: Always, so a moved tag is never run from a stale cache.",
    )
    workload_service_account: str | None = Field(
        None, description="ServiceAccount of the Job pods when a spec names none."
    )
    workload_command: str = Field("kubequant", description="Executable of the workload container.")
    workload_policy: WorkloadPolicy = Field(
        default_factory=WorkloadPolicy,
        description="What a spec's pod may ask for (images, ServiceAccounts, tolerations, node labels, "
        "priority classes, pull secrets, resource ceilings, class modules), as JSON in "
        "KUBEQUANT_WORKLOAD_POLICY (the chart's workloadPolicy); unset lists default to the workload "
        "image's repository and the workload ServiceAccount.",
    )
    api_server_cidrs: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses of the API server as pods reach it, as CIDRs (comma-separated in env): the "
        "trading pods' NetworkPolicy lets them reach only these (on api_server_ports). Empty: any address.",
    )
    api_server_ports: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [443, 6443],
        description="Ports of the API server (comma-separated in env), for the trading pods' NetworkPolicy.",
    )
    retry_delay_seconds: float = Field(
        30,
        gt=0,
        description="Delay before retrying a reconcile that waits for a dependency (a volume).",
    )

    @model_validator(mode="before")
    @classmethod
    def _split_lists(cls, data: object) -> object:
        if isinstance(data, dict):
            for key in ("namespaces", "api_server_cidrs", "api_server_ports"):
                if isinstance(data.get(key), str):
                    data = {**data, key: [n for n in re.split(r"[,\s]+", data[key]) if n]}
        return data

    @model_validator(mode="after")
    def _resolve_policy(self) -> OperatorConfig:
        self.workload_policy = self.workload_policy.resolved(
            self.workload_image, self.workload_service_account
        )
        return self

    def allowed_modules(self) -> tuple[str, ...]:
        """The module prefixes a spec's classes may come from: the built-in ones and the policy's."""
        return module_allow_list(self.workload_policy.allowed_modules)

    def effective_priority(self) -> int:
        """The peering priority, from the pod ordinal when asked to."""
        if self.priority_from_ordinal and self.pod_name:
            match = re.search(r"-(\d+)$", self.pod_name)
            if match:
                return 1000 - int(match.group(1))
        return self.priority
