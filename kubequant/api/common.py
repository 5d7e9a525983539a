"""Types shared by the four kinds: pod placement, Job knobs, data, artifacts, references, conditions."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kubequant.api.base import ApiModel, Rule
from kubequant.api.modules import (
    CONTEXT_KEY,
    DEFAULT_ALLOWED_MODULES,
    FIX_HINT,
    MAX_KWARGS_DEPTH,
    kwargs_depth,
    module_allowed,
    nested_class_modules,
    non_finite_numbers,
)
from kubequant.api.quantity import (
    QUALIFIED_RESOURCE_PATTERN,
    QUANTITY_PATTERN,
    is_extended,
    is_hugepages,
    overcommit_allowed,
    quantity_or_none,
    valid_container_resource_name,
)

# Kubernetes quantity ("500m", "2Gi", 4): an int or a string in the API server's quantity grammar.
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
# A folder inside a volume: relative, '/'-separated, no empty, '.' or '..' segment, no backslash, so
# that a subPath can never climb out of the volume (the API server refuses such a Job, forever).
_SUB_PATH_SEGMENT = r"(?:[^/.\\][^/\\]*|\.[^/.\\][^/\\]*|\.\.[^/\\]+)"
SUB_PATH_PATTERN = rf"^{_SUB_PATH_SEGMENT}(?:/{_SUB_PATH_SEGMENT})*$"
SubPath = Annotated[str, StringConstraints(pattern=SUB_PATH_PATTERN, max_length=1024)]
# A container image reference, in the grammar of the distribution project's reference package:
# [domain[:port]/]path[:tag][@digest], lower-case path components.
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
IMAGE_PATTERN = (
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?/)?"
    rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
ImageReference = Annotated[str, StringConstraints(pattern=IMAGE_PATTERN, max_length=512)]


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


def _q(value: str) -> str:
    """CEL: the quantity of an int-or-string value (the API server's quantity library).

    The type test spares ``string()``: the API server estimates an int-or-string value at the whole
    request's size, and every conversion or parse of it counts that size against the CRD's CEL budget.
    """
    return f"(type({value}) == int ? quantity('0').add({value}) : quantity({value}))"


def _cel_string(text: str) -> str:
    """``text`` inside a single-quoted CEL string literal (regex backslashes doubled)."""
    return text.replace("\\", "\\\\").replace("'", "\\'")


# CEL twins of kubequant.api.quantity's name classes; k is a resource name.
_CEL_EXTENDED = "(k.contains('/') && !k.contains('kubernetes.io/'))"
_CEL_NO_OVERCOMMIT = f"(k.startsWith('hugepages-') || {_CEL_EXTENDED})"
# Resources per map: each quantity the rules parse costs CEL budget per entry (see _q); 8 is more
# than a container uses (cpu, memory, ephemeral-storage, a device, two huge page sizes).
MAX_RESOURCES = 8


def _negative(quantity: int | str) -> bool:
    # Textual for strings, as the CEL twin (a sign test that needs no parse): "-0" counts as negative.
    return quantity < 0 if isinstance(quantity, int) else quantity.startswith("-")


def _whole(quantity: int | str) -> bool:
    """Whether the quantity is an int64 integer (CEL's isInteger); True when it is no quantity at all."""
    value = quantity_or_none(quantity)
    return value is None or (value == value.to_integral_value() and abs(value) < 2**63)


def _resource_map_rules(name: str) -> tuple[Rule, ...]:
    """Rules on one map of ResourceRequirements (requests or limits), as the API server checks a pod's."""
    m = f"self.{name}"
    v = f"{m}[k]"

    def entries(r: ResourceRequirements) -> dict[str, int | str]:
        return getattr(r, name) or {}

    return (
        Rule(
            cel=f"!has({m}) || {m}.all(k, k in ['cpu', 'memory', 'ephemeral-storage'] || "
            f"k.startsWith('hugepages-') || (k.matches('{_cel_string(QUALIFIED_RESOURCE_PATTERN)}') && "
            f"k.indexOf('/') <= 253 && k.size() - k.indexOf('/') <= 64 && "
            f"!(k.startsWith('requests.') && {_CEL_EXTENDED})))",
            message="not a container resource; use cpu, memory, ephemeral-storage, hugepages-<size> or a "
            "domain-qualified name such as nvidia.com/gpu",
            field=name,
            check=lambda r: all(valid_container_resource_name(k) for k in entries(r)),
        ),
        Rule(
            cel=f"!has({m}) || {m}.all(k, type({v}) == int ? {v} >= 0 : !{v}.startsWith('-'))",
            message="a resource quantity cannot be negative; use 0 or more (nvidia.com/gpu: 1 is one GPU)",
            field=name,
            check=lambda r: not any(_negative(q) for q in entries(r).values()),
        ),
        Rule(
            cel=f"!has({m}) || {m}.all(k, type({v}) == int || !{_CEL_EXTENDED} || quantity({v}).isInteger())",
            message="an extended resource such as nvidia.com/gpu is counted in whole units; use an integer",
            field=name,
            check=lambda r: all(not is_extended(k) or _whole(q) for k, q in entries(r).items()),
        ),
    )


def _compare(r: ResourceRequirements, key: str) -> int | None:
    """requests[key] compared with limits[key] (-1, 0, 1), or None if either is missing or no quantity."""
    pair = [(part or {}).get(key) for part in (r.requests, r.limits)]
    req, lim = (None if q is None else quantity_or_none(q) for q in pair)
    if req is None or lim is None:
        return None
    return (req > lim) - (req < lim)


def _uses_hugepages(r: ResourceRequirements) -> bool:
    return any(is_hugepages(k) for k in (*(r.requests or {}), *(r.limits or {})))


def _has_cpu_or_memory(r: ResourceRequirements) -> bool:
    return any(k in ("cpu", "memory") for k in (*(r.requests or {}), *(r.limits or {})))


class ResourceRequirements(ApiModel):
    """Compute resources for the workload's container, as in core/v1 (cpu, memory, nvidia.com/gpu, …).

    Checked as the API server checks a pod's, so that a bad value is refused when the object is
    applied, not when the operator creates its pod.
    """

    requests: dict[str, Quantity] | None = Field(
        None,
        max_length=MAX_RESOURCES,
        description="Minimum resources the scheduler reserves, e.g. {cpu: '2', memory: 4Gi}; at most the "
        "limit; for an extended resource (nvidia.com/gpu) or hugepages, equal to the limit (a request alone "
        "becomes the limit too).",
    )
    limits: dict[str, Quantity] | None = Field(
        None,
        max_length=MAX_RESOURCES,
        description="Maximum resources; nvidia.com/gpu must be set here (a whole number) to get a GPU.",
    )

    __rules__ = (
        *_resource_map_rules("requests"),
        *_resource_map_rules("limits"),
        Rule(
            cel="!has(self.requests) || !has(self.limits) || self.requests.all(k, "
            f"{_CEL_NO_OVERCOMMIT} || !(k in self.limits) || "
            f"{_q('self.requests[k]')}.compareTo({_q('self.limits[k]')}) <= 0)",
            message="a request cannot exceed its limit; lower the request or raise the limit",
            field="requests",
            check=lambda r: all(
                not overcommit_allowed(k) or (_compare(r, k) or 0) <= 0 for k in r.requests or {}
            ),
        ),
        # A request alone is fine: the operator copies it into limits, as Kubernetes requires
        # (kubequant.operator.builders.common.resources_dict).
        Rule(
            cel=f"!has(self.requests) || !has(self.limits) || self.requests.all(k, !{_CEL_NO_OVERCOMMIT} || "
            f"!(k in self.limits) || {_q('self.requests[k]')}.compareTo({_q('self.limits[k]')}) == 0)",
            message="an extended resource (nvidia.com/gpu) or hugepages cannot be overcommitted: its request "
            "must equal its limit; set the same value in both, or only one of them",
            field="requests",
            check=lambda r: all(
                overcommit_allowed(k) or _compare(r, k) in (0, None) for k in r.requests or {}
            ),
        ),
        Rule(
            cel="!((has(self.requests) && self.requests.exists(k, k.startsWith('hugepages-'))) || "
            "(has(self.limits) && self.limits.exists(k, k.startsWith('hugepages-')))) || "
            "(has(self.requests) && ('cpu' in self.requests || 'memory' in self.requests)) || "
            "(has(self.limits) && ('cpu' in self.limits || 'memory' in self.limits))",
            message="hugepages need cpu or memory too; add a cpu or memory request or limit",
            check=lambda r: not _uses_hugepages(r) or _has_cpu_or_memory(r),
        ),
    )


class PullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class PodOptions(ApiModel):
    """Where and how the workload's pod runs. Ignored by `kubequant run`, which runs in process."""

    image: ImageReference | None = Field(
        None,
        description="Container image, e.g. ghcr.io/org/kubequant:0.2.0 or …@sha256:<digest>; defaults to the "
        "operator's workload image. The cluster's workload policy decides which repositories are allowed.",
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

    claim_name: ObjectName = Field(description="Name of the PersistentVolumeClaim.")
    sub_path: SubPath | None = Field(
        None,
        description="Folder inside the volume: a relative path of '/'-separated names, none of them "
        "empty, '.' or '..' (e.g. cn/daily).",
    )


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
    volume: VolumeData | None = Field(
        None,
        description="A PersistentVolumeClaim; the run writes into <subPath>/<namespace>/<name> of it "
        "(see perRunFolder).",
    )
    per_run_folder: bool = Field(
        True,
        description="With volume: write into a folder of this run's own, <subPath>/<namespace>/<name> "
        "(<namespace>/<name> without subPath), so that no run overwrites another's report. false writes "
        "straight into volume.subPath, which must then be set; runs sharing it overwrite each other.",
    )

    __rules__ = (
        exactly_one_rule(["path", "volume"], "leave both unset for the default location", True),
        Rule(
            cel="self.perRunFolder || (has(self.volume) && has(self.volume.subPath))",
            message="perRunFolder: false writes straight into volume.subPath, and none is set; set "
            "volume.subPath to a folder for this run alone, or remove perRunFolder",
            field="perRunFolder",
            check=lambda a: a.per_run_folder or (a.volume is not None and bool(a.volume.sub_path)),
        ),
    )


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
        None,
        description="Module that defines the class; a default per role applies. It must lie under an "
        "allowed prefix: qlib, kubequant, lightgbm, or one the cluster admin added.",
    )
    kwargs: dict[str, object] = Field(
        default_factory=dict,
        description=f"Keyword arguments passed to the class (free-form, nested at most {MAX_KWARGS_DEPTH} levels).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )

    @field_validator("kwargs")
    @classmethod
    def _bounded_kwargs(cls, value: dict[str, object]) -> dict[str, object]:
        depth = kwargs_depth(value)
        if depth > MAX_KWARGS_DEPTH:
            raise _refusal(
                "",
                f"kwargs are nested more than {MAX_KWARGS_DEPTH} levels deep; "
                "flatten them (a class config needs a few levels at most)",
            )
        for where in non_finite_numbers(value, ""):
            raise _refusal(
                where.lstrip("."),
                "NaN and infinity cannot travel in a manifest (JSON, and so the API server, has neither); "
                "write a finite number, or leave the argument out for the class's default",
            )
        return value

    @model_validator(mode="after")
    def _allowed_modules(self, info: ValidationInfo) -> ClassReference:
        """Every module this reference makes qlib import lies under an allowed prefix."""
        prefixes = (info.context or {}).get(CONTEXT_KEY) or DEFAULT_ALLOWED_MODULES
        named = [("module", self.module)] if self.module is not None else []
        named += sorted(nested_class_modules(self.kwargs))
        for field, module in named:
            if not module_allowed(module, prefixes):
                raise _refusal(
                    field,
                    f"module {module} is not allowed (allowed: {', '.join(prefixes)}); {FIX_HINT}",
                )
        return self


def _refusal(field: str, message: str) -> PydanticCustomError:
    """A rule's error, blaming ``field`` below the model; the text goes through as it is (no templating)."""
    return PydanticCustomError("cross_field", "{text}", {"field": field, "text": message})
