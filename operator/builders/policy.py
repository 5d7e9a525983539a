"""The cluster admin's workload policy: what the pod of a kubequant object may be.

Creating a Backtest (later a TrainingJob or a LiveTradingSession) makes the operator create a pod
with the operator's rights, so a spec must not ask for more than its author could get directly:
an image from any registry, another ServiceAccount (and with it any workload identity bound to
it), a toleration of every taint, a control-plane nodeSelector, a system priority class, another
team's pull secret, eight GPUs. ``policy_violations`` checks a spec's ``PodOptions`` against the
``WorkloadPolicy`` the chart configures (``workloadPolicy`` in its values,
``KUBEQUANT_WORKLOAD_POLICY`` for the operator); the chart's ValidatingAdmissionPolicy applies the
same rules in the API server. Only what a spec sets is checked: the operator's own defaults (its
workload image and ServiceAccount, the GPU toleration it adds) are the admin's.

Pure: no Kubernetes client, no kopf; every kind calls it with its own ``PodOptions``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, Field, StringConstraints, field_validator

from kubequant.api.base import ApiModel
from kubequant.api.common import PodOptions, Quantity, ResourceRequirements
from kubequant.api.modules import check_prefix
from kubequant.api.quantity import parse_quantity
from kubequant.api.training import RayWorkers

GPU_RESOURCE = "nvidia.com/gpu"
HINT = "admins allow more in workloadPolicy"
# The dev cluster's and the usual cloud GPU pool: nodes labelled kubequant.io/pool=gpu, tainted
# nvidia.com/gpu (hack/nodes.yaml); the operator adds that toleration itself to a GPU pod.
GPU_POOL_LABEL = "kubequant.io/pool"
GPU_TAINT = GPU_RESOURCE
# An allowed-image entry: a registry and repository path, fully qualified ("docker.io/library/python",
# never "python"), optionally ending in "/" to allow everything under it ("ghcr.io/acme/").
# A registry as the runtime tells it from a path: a name with a dot or a port, or localhost.
_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:(?:localhost|{_LABEL}(?:\.{_LABEL})+)(?::[0-9]+)?|{_LABEL}:[0-9]+)"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
IMAGE_ENTRY_PATTERN = rf"^{_DOMAIN}(?:(?:/{_COMPONENT})+/?|/)$"
ImageEntry = Annotated[str, StringConstraints(pattern=IMAGE_ENTRY_PATTERN, max_length=512)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=316)]

DEFAULT_MAX_RESOURCES: dict[str, int | str] = {
    "cpu": "16",
    "memory": "64Gi",
    "ephemeral-storage": "100Gi",
    GPU_RESOURCE: 4,
}


class WorkloadPolicy(ApiModel):
    """What a kubequant object's pod may ask for. Unset (None) lists take the operator's own defaults."""

    allowed_images: list[ImageEntry] | None = Field(
        None,
        description="Repositories spec.pod.image may name (any tag or digest), fully qualified "
        "(docker.io/library/python), or prefixes ending in '/' (ghcr.io/acme/). None: the repository "
        "of the operator's workload image only.",
    )
    allowed_service_accounts: list[Name] | None = Field(
        None,
        description="ServiceAccounts spec.pod.serviceAccountName may name. None: the operator's workload "
        "ServiceAccount (or 'default' when it has none).",
    )
    allowed_priority_classes: list[Name] = Field(
        default_factory=list,
        description="PriorityClasses spec.pod.priorityClassName may name; none by default.",
    )
    allowed_toleration_keys: list[Name] = Field(
        default_factory=lambda: [GPU_TAINT],
        description="Taint keys spec.pod.tolerations may tolerate; a toleration without a key (every "
        "taint) is never allowed. Default: the GPU pool's taint.",
    )
    allowed_node_selector_keys: list[Name] = Field(
        default_factory=lambda: [GPU_POOL_LABEL],
        description="Label keys spec.pod.nodeSelector may use. Default: the node pool label.",
    )
    allowed_image_pull_secrets: list[Name] = Field(
        default_factory=list,
        description="Secrets spec.pod.imagePullSecrets may name; none by default.",
    )
    max_resources: dict[str, Quantity] = Field(
        default_factory=lambda: dict(DEFAULT_MAX_RESOURCES),
        description="Ceiling of each resource a pod may request or limit (cpu, memory, nvidia.com/gpu, …); "
        "a resource without a ceiling may not be asked for.",
    )
    allowed_modules: list[str] = Field(
        default_factory=list,
        description="Module prefixes a spec's classes may come from, besides qlib, kubequant and lightgbm.",
    )

    @field_validator("allowed_modules")
    @classmethod
    def _module_prefixes(cls, value: list[str]) -> list[str]:
        return [check_prefix(p) for p in value]

    @field_validator("max_resources")
    @classmethod
    def _quantities(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name, quantity in value.items():
            parse_quantity(quantity, f"maxResources.{name}")
        return value

    def resolved(self, workload_image: str, workload_service_account: str | None) -> WorkloadPolicy:
        """The policy with its None lists filled from the operator's own workload settings."""
        update: dict[str, Any] = {}
        if self.allowed_images is None:
            update["allowed_images"] = [image_repository(workload_image)]
        if self.allowed_service_accounts is None:
            update["allowed_service_accounts"] = [workload_service_account or "default"]
        return self.model_copy(update=update)


@dataclass(frozen=True)
class PolicyViolation:
    """One field of a spec that the workload policy refuses."""

    field: str
    message: str
    fix: str

    def one_line(self) -> str:
        """``field: message — fix: …``, as every kubequant error reads."""
        return f"{self.field}: {self.message} — fix: {self.fix}"


# --------------------------------------------------------------------------- images


def image_repository(reference: str) -> str:
    """The fully qualified repository of an image reference, as the container runtime resolves it.

    ``python:3.11`` → ``docker.io/library/python``; ``ghcr.io/acme/x@sha256:…`` → ``ghcr.io/acme/x``.
    """
    name = reference.split("@", 1)[0]
    if ":" in name.rsplit("/", 1)[-1]:
        name = name[: name.rfind(":")]
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        domain = "docker.io" if first == "index.docker.io" else first
    else:
        domain, rest = "docker.io", name
    if domain == "docker.io" and "/" not in rest:
        rest = f"library/{rest}"  # Docker Hub's official images
    return f"{domain}/{rest}"


def image_allowed(reference: str, entries: list[str]) -> bool:
    """Whether the image's repository is an entry, or lies under an entry ending in '/'."""
    repository = image_repository(reference)
    return any(repository.startswith(e) if e.endswith("/") else repository == e for e in entries)


# --------------------------------------------------------------------------- the check


def _listed(values: list[str]) -> str:
    return ", ".join(values) if values else "none"


def resource_violations(
    resources: ResourceRequirements, policy: WorkloadPolicy, field: str
) -> Iterator[PolicyViolation]:
    """Every request or limit of ``resources`` (at ``field``) above the policy's ceiling, or not allowed at all."""
    ceilings = ", ".join(f"{k} {v}" for k, v in sorted(policy.max_resources.items())) or "none"
    for part in ("requests", "limits"):
        for name, quantity in (getattr(resources, part) or {}).items():
            where = f"{field}.{part}.{name}"
            ceiling = policy.max_resources.get(name)
            if ceiling is None:
                yield PolicyViolation(
                    where,
                    f"resource {name} is not allowed by the workload policy (allowed: "
                    f"{_listed(sorted(policy.max_resources))})",
                    f"remove it; {HINT}.maxResources",
                )
            elif parse_quantity(quantity, where) > parse_quantity(ceiling):
                yield PolicyViolation(
                    where,
                    f"{quantity} {name} is above the workload policy's ceiling of {ceiling} per object "
                    f"(ceilings: {ceilings})",
                    f"ask for at most {ceiling}; {HINT}.maxResources",
                )


def gpu_violations(gpus: int, policy: WorkloadPolicy, field: str) -> Iterator[PolicyViolation]:
    """A count of GPUs per pod (a Ray worker's gpusPerWorker) against the policy's GPU ceiling."""
    if gpus <= 0:
        return
    ceiling = policy.max_resources.get(GPU_RESOURCE)
    if ceiling is None:
        yield PolicyViolation(
            field, "GPUs are not allowed by the workload policy", f"set 0; {HINT}.maxResources.{GPU_RESOURCE}"
        )
    elif gpus > parse_quantity(ceiling):
        yield PolicyViolation(
            field,
            f"{gpus} GPUs per pod is above the workload policy's ceiling of {ceiling}",
            f"ask for at most {ceiling}; {HINT}.maxResources",
        )


def pod_violations(
    pod: PodOptions, policy: WorkloadPolicy, field: str = "spec.pod"
) -> Iterator[PolicyViolation]:
    """Every way ``pod`` (at ``field`` of its object) breaks ``policy`` (resolved), in field order."""
    hint = HINT

    def refused(where: str, what: str, allowed: list[str], fix: str, key: str) -> PolicyViolation:
        return PolicyViolation(
            where,
            f"{what} is not allowed by the workload policy (allowed: {_listed(allowed)})",
            f"{fix}; {hint}.{key}",
        )

    images = policy.allowed_images or []
    if pod.image is not None and not image_allowed(pod.image, images):
        yield refused(
            f"{field}.image",
            f"image {pod.image} (repository {image_repository(pod.image)})",
            images,
            "use an allowed image, or leave image unset for the operator's",
            "allowedImages",
        )
    for i, secret in enumerate(pod.image_pull_secrets or []):
        if secret.name not in policy.allowed_image_pull_secrets:
            yield refused(
                f"{field}.imagePullSecrets[{i}].name",
                f"pull secret {secret.name}",
                policy.allowed_image_pull_secrets,
                "remove it",
                "allowedImagePullSecrets",
            )
    if pod.resources is not None:
        yield from resource_violations(pod.resources, policy, f"{field}.resources")
    for key in pod.node_selector or {}:
        if key not in policy.allowed_node_selector_keys:
            yield refused(
                f"{field}.nodeSelector.{key}",
                f"node label {key}",
                policy.allowed_node_selector_keys,
                "select nodes by the allowed labels only",
                "allowedNodeSelectorKeys",
            )
    for i, toleration in enumerate(pod.tolerations or []):
        if not toleration.key:
            yield PolicyViolation(
                f"{field}.tolerations[{i}].key",
                "a toleration without a key tolerates every taint, which the workload policy never allows",
                f"name the taint's key (allowed: {_listed(policy.allowed_toleration_keys)})",
            )
        elif toleration.key not in policy.allowed_toleration_keys:
            yield refused(
                f"{field}.tolerations[{i}].key",
                f"tolerating taint {toleration.key}",
                policy.allowed_toleration_keys,
                "tolerate allowed taints only",
                "allowedTolerationKeys",
            )
    accounts = policy.allowed_service_accounts or []
    if pod.service_account_name is not None and pod.service_account_name not in accounts:
        yield refused(
            f"{field}.serviceAccountName",
            f"ServiceAccount {pod.service_account_name}",
            accounts,
            "use an allowed one, or leave it unset",
            "allowedServiceAccounts",
        )
    if pod.priority_class_name is not None and pod.priority_class_name not in policy.allowed_priority_classes:
        yield refused(
            f"{field}.priorityClassName",
            f"PriorityClass {pod.priority_class_name}",
            policy.allowed_priority_classes,
            "use an allowed one, or leave it unset",
            "allowedPriorityClasses",
        )


def policy_violations(resource: ApiModel, policy: WorkloadPolicy) -> list[PolicyViolation]:
    """Every violation of ``policy`` by the pod options anywhere in ``resource`` (any kind).

    Also the resources a spec asks for outside its pod options (a TrainingJob's Ray head and
    workers, each worker's GPUs): the ceilings hold for every pod the object makes.
    """
    out: list[PolicyViolation] = []
    pods = list(find_models(resource, PodOptions))
    for path, pod in pods:
        out.extend(pod_violations(pod, policy, path))
    in_pods = {f"{path}.resources" for path, _ in pods}
    for path, resources in find_models(resource, ResourceRequirements):
        if path not in in_pods:
            out.extend(resource_violations(resources, policy, path))
    for path, workers in find_models(resource, RayWorkers):
        out.extend(gpu_violations(workers.gpus_per_worker, policy, f"{path}.gpusPerWorker"))
    return out


def find_models(model: BaseModel, cls: type[Any], path: str = "") -> Iterator[tuple[str, Any]]:
    """(camelCase field path, instance) of every ``cls`` inside ``model``, in field order."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        where = f"{path}.{info.alias or name}" if path else (info.alias or name)
        yield from _find_in(value, cls, where)


def _find_in(value: Any, cls: type[Any], where: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, cls):
        yield where, value
    elif isinstance(value, BaseModel):
        yield from find_models(value, cls, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _find_in(item, cls, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _find_in(item, cls, f"{where}.{key}")
