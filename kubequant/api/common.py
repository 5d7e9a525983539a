"""Types shared by the four kinds: pod placement, Job knobs, data, artifacts, references, conditions."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints

from kubequant.api.base import ApiModel, Rule

# Kubernetes quantity ("500m", "2Gi", 4): an int or a string in the API server's quantity grammar.
QUANTITY_PATTERN = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
Quantity = Annotated[
    int | Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=64)],
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
ObjectName = Annotated[str, StringConstraints(pattern=DNS_SUBDOMAIN, max_length=253)]
# Instrument codes as qlib stores them (upper case letters, digits, dot, underscore, dash).
InstrumentCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]+$", min_length=1, max_length=32)]
PythonName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]
ModulePath = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", max_length=256)
]
AbsolutePath = Annotated[str, StringConstraints(pattern=r"^/", max_length=1024)]
FilePath = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


def exactly_one_rule(names: list[str], fix: str, allow_none: bool = False) -> Rule:
    """A rule that at most (or exactly) one of several optional members is set."""
    flags = ", ".join(f"has(self.{n})" for n in names)
    op = "<=" if allow_none else "=="
    members = ", ".join(names)
    quantifier = "at most one" if allow_none else "exactly one"
    return Rule(
        cel=f"[{flags}].filter(x, x).size() {op} 1",
        message=f"set {quantifier} of {members}; {fix}",
        check=lambda m: (
            sum(getattr(m, _snake(n)) is not None for n in names) <= 1
            if allow_none
            else sum(getattr(m, _snake(n)) is not None for n in names) == 1
        ),
    )


def _snake(camel: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in camel)


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: ObjectName = Field(description="Name of the referenced object.")


class SecretKeyReference(ApiModel):
    """A key of a Secret in the same namespace."""

    name: ObjectName = Field(description="Name of the Secret.")
    key: Annotated[str, StringConstraints(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)] = Field(
        description="Key within the Secret's data."
    )


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    """A pod toleration, as in core/v1 (lets the pod land on tainted nodes such as a GPU pool)."""

    key: str | None = Field(
        None, max_length=316, description="Taint key to tolerate; empty with Exists tolerates all."
    )
    operator: TolerationOperator = Field(TolerationOperator.EQUAL, description="Exists or Equal.")
    value: str | None = Field(
        None, max_length=63, description="Taint value to match when the operator is Equal."
    )
    effect: TaintEffect | None = Field(
        None, description="Taint effect to tolerate; empty tolerates all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="For NoExecute: how long the pod stays bound after the taint appears."
    )

    __rules__ = (
        Rule(
            cel="self.operator != 'Exists' || !has(self.value)",
            message="a toleration with operator Exists must not set value; remove value or use operator Equal",
            field="value",
            check=lambda t: t.operator != TolerationOperator.EXISTS or t.value is None,
        ),
    )


class ResourceRequirements(ApiModel):
    """Compute resources for the workload's container, as in core/v1 (cpu, memory, nvidia.com/gpu, …)."""

    requests: dict[str, Quantity] | None = Field(
        None,
        max_length=16,
        description="Minimum resources the scheduler reserves, e.g. {cpu: '2', memory: 4Gi}.",
    )
    limits: dict[str, Quantity] | None = Field(
        None, max_length=16, description="Maximum resources; nvidia.com/gpu must be set here to get a GPU."
    )


class PullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class PodOptions(ApiModel):
    """Where and how the workload's pod runs. Ignored by `kubequant run`, which runs in process."""

    image: str | None = Field(
        None,
        max_length=512,
        description="Container image; defaults to the operator's configured workload image.",
    )
    image_pull_policy: PullPolicy | None = Field(None, description="Always, IfNotPresent or Never.")
    image_pull_secrets: list[LocalObjectReference] | None = Field(
        None, max_length=16, description="Secrets holding registry credentials for the image."
    )
    resources: ResourceRequirements | None = Field(
        None, description="CPU, memory and GPU requests and limits."
    )
    node_selector: dict[str, Annotated[str, StringConstraints(max_length=63)]] | None = Field(
        None, max_length=32, description="Node labels the pod must land on, e.g. {kubequant.io/pool: gpu}."
    )
    tolerations: list[Toleration] | None = Field(
        None, max_length=32, description="Taints the pod tolerates, e.g. the GPU pool's nvidia.com/gpu taint."
    )
    service_account_name: ObjectName | None = Field(None, description="ServiceAccount the pod runs as.")
    priority_class_name: ObjectName | None = Field(None, description="PriorityClass of the pod.")


class JobOptions(ApiModel):
    """Knobs of the Kubernetes Job that runs a bounded workload."""

    active_deadline_seconds: int | None = Field(
        None,
        ge=1,
        description="Wall-clock limit of the whole run; the Job fails with DeadlineExceeded after it.",
    )
    backoff_limit: int = Field(0, ge=0, le=100, description="Retries of a failed pod before the run fails.")
    ttl_seconds_after_finished: int | None = Field(
        None,
        ge=0,
        description="Delete the finished Job (not the custom resource) this many seconds after it ends.",
    )


class DateRange(ApiModel):
    """A closed range of trading days."""

    start: dt.date = Field(description="First day (YYYY-MM-DD).")
    end: dt.date = Field(description="Last day (YYYY-MM-DD); must be after start.")

    __rules__ = (
        Rule(
            cel="self.end > self.start",
            message="end must be after start; swap them or move end later",
            field="end",
            check=lambda r: r.end > r.start,
        ),
    )


class SampleData(ApiModel):
    """The built-in deterministic synthetic market (generated on first use, cached)."""

    instruments: int = Field(300, ge=1, le=5000, description="Number of synthetic stocks.")
    start: dt.date = Field(dt.date(2020, 1, 1), description="First calendar day of the sample.")
    end: dt.date = Field(dt.date(2022, 12, 31), description="Last calendar day of the sample.")
    seed: int = Field(
        42, ge=0, description="Random seed; the same seed gives the same bundle, byte for byte."
    )
    minute_bars: bool = Field(
        False,
        description="Also write 1-minute bars (09:30–11:30, 13:00–15:00) consistent with the daily ones, "
        "for nested execution; their instruments form the market 'intraday'.",
    )
    minute_instruments: int = Field(50, ge=1, le=5000, description="Instruments that get minute bars.")
    minute_days: int = Field(
        60, ge=1, le=1000, description="Last trading days of the sample that get minute bars."
    )

    __rules__ = (
        Rule(
            cel="self.end > self.start",
            message="sample end must be after start; move end later",
            field="end",
            check=lambda s: s.end > s.start,
        ),
    )


class VolumeData(ApiModel):
    """A qlib bundle on a PersistentVolumeClaim (cluster only)."""

    claim_name: ObjectName = Field(description="Name of the PersistentVolumeClaim holding the bundle.")
    sub_path: str | None = Field(None, max_length=1024, description="Folder of the bundle inside the volume.")


class DataSource(ApiModel):
    """Where the qlib data bundle comes from. Set at most one of sample, path, volume; none means sample."""

    sample: SampleData | None = Field(None, description="The built-in synthetic market (the default).")
    path: AbsolutePath | None = Field(
        None,
        description="Absolute path of a qlib bundle on the machine (kubequant run) or in the pod's image.",
    )
    volume: VolumeData | None = Field(None, description="A qlib bundle on a PersistentVolumeClaim.")
    region: str = Field("cn", pattern=r"^(cn|us|tw)$", description="qlib region: trading rules (cn, us, tw).")

    __rules__ = (
        exactly_one_rule(["sample", "path", "volume"], "leave all unset for the built-in sample", True),
    )

    def resolved_sample(self) -> SampleData | None:
        """The sample settings if this source is the built-in sample (explicitly or by default)."""
        if self.path is None and self.volume is None:
            return self.sample or SampleData()
        return None


class ArtifactLocation(ApiModel):
    """Where a run writes its full report or model. Set at most one of path, volume."""

    path: FilePath | None = Field(
        None, description="A folder on the local machine (kubequant run) or in the pod; created if missing."
    )
    volume: VolumeData | None = Field(None, description="A folder on a PersistentVolumeClaim.")

    __rules__ = (exactly_one_rule(["path", "volume"], "leave both unset for the default location", True),)


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(ApiModel):
    """A condition in the Kubernetes API conventions."""

    type: Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Za-z0-9]*$", max_length=316)] = Field(
        description="Condition type, e.g. Accepted, Running, Succeeded, Failed, Ready."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: Annotated[
        str, StringConstraints(pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$", max_length=1024)
    ] = Field(description="CamelCase reason for the last transition.")
    message: str = Field("", max_length=32768, description="Human-readable details.")
    last_transition_time: dt.datetime = Field(description="When the status last changed.")
    observed_generation: int | None = Field(
        None, ge=0, description="The .metadata.generation this condition is about."
    )


class ClassReference(ApiModel):
    """An importable Python class and the keyword arguments it is built with."""

    class_name: PythonName = Field(alias="class", description="Class name, e.g. LGBModel.")
    module: ModulePath | None = Field(
        None, description="Module that defines the class; a default per role applies."
    )
    kwargs: dict[str, object] = Field(
        default_factory=dict,
        description="Keyword arguments passed to the class (free-form).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
