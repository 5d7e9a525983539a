"""The envelope of every kind: apiVersion, kind, metadata, and the status fields all kinds share."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from kubequant.api.base import ApiModel, CrdFacts
from kubequant.api.common import DNS_SUBDOMAIN, Condition
from kubequant.version import API_GROUP, API_VERSION

API_GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
# `kubectl apply` keeps the whole object in an annotation (JSON, non-ASCII escaped), a Backtest's pod
# its resolved manifest in another, and kopf the spec, labels and annotations it last handled in
# status.kopf (an older operator: in an annotation); all annotations of an object share 256 KiB. At
# most 80 KiB of spec, labels and annotations keeps every copy under it, so the operator can always
# record that it handled an object.
MAX_OBJECT_BYTES = 80 * 1024
_OWN_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
_OWN_PREFIX = f"{API_GROUP}/"  # the operator's own bookkeeping (kopf progress and diff base)


def essence_bytes(doc: dict[str, Any]) -> int:
    """Size of what kopf copies into its diff-base annotation: spec, labels and annotations, as kopf encodes it."""
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    annotations = {
        k: v
        for k, v in ((meta or {}).get("annotations") or {}).items()
        if k not in _OWN_ANNOTATIONS and not str(k).startswith(_OWN_PREFIX)
    }
    essence = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata", "status")} | {
        "metadata": {"labels": (meta or {}).get("labels"), "annotations": annotations}
    }
    return len(json.dumps(essence, separators=(",", ":"), default=str))


class ObjectMeta(ApiModel):
    """The part of Kubernetes' ObjectMeta a manifest sets; server-written fields are kept as they are."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253, description="Object name (a DNS subdomain).")
    namespace: str | None = Field(None, max_length=63, description="Namespace of the object.")
    labels: dict[str, str] | None = Field(
        None, description="Key/value labels for selecting and grouping objects."
    )
    annotations: dict[str, str] | None = Field(
        None, description="Key/value notes for tools; not used for selection."
    )
    generation: int | None = Field(
        None, description="Written by the API server: changes whenever the spec does."
    )
    uid: str | None = Field(None, description="Written by the API server: the object's unique id.")


class StatusBase(ApiModel):
    """Status fields every kind has."""

    observed_generation: int | None = Field(None, ge=0, description="The .metadata.generation last acted on.")
    conditions: list[Condition] | None = Field(
        None, max_length=16, description="Current conditions in the Kubernetes API conventions."
    )
    message: str | None = Field(None, max_length=4096, description="Last notable event, for humans.")
    # Written by kopf alone (operator/persistence.py), never from these models: left out of what they
    # serialize (the signal API's /v1/status has no such field), kept in the CRD's schema.
    kopf: dict[str, object] | None = Field(
        None,
        exclude=True,
        description="The operator's bookkeeping (kopf's handler progress and the configuration it last "
        "handled), written with the status; not for users.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class ChildReference(ApiModel):
    """An object the operator created for this one, as the API server named it at creation."""

    kind: str = Field(max_length=63, description="Kind of the child, e.g. Job or StatefulSet.")
    name: str = Field(max_length=253, description="Name of the child.")
    uid: str = Field(max_length=64, description="uid of the child the operator created.")


class WorkloadStatus(StatusBase):
    """Status of a kind whose operator creates child objects (a Job, a StatefulSet, ...)."""

    children: list[ChildReference] | None = Field(
        None,
        max_length=16,
        description="The objects the operator created, with their uids: only these speak for this object. "
        "A look-alike with the same name (a child deleted and recreated by someone else) is not adopted.",
    )


class Resource(ApiModel):
    """A kubequant custom resource; subclasses set ``spec``, ``status`` and ``__crd__``."""

    __crd__: ClassVar[CrdFacts]

    api_version: str = Field(API_GROUP_VERSION, description="kubequant.io/v1alpha1")
    kind: str = Field(description="The kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")

    @model_validator(mode="before")
    @classmethod
    def _bounded_size(cls, data: Any) -> Any:
        if isinstance(data, dict):
            try:
                size = essence_bytes(data)
            except (RecursionError, ValueError, TypeError):
                size = MAX_OBJECT_BYTES + 1  # nested past what JSON can encode: far too deep anyway
            if size > MAX_OBJECT_BYTES:
                raise PydanticCustomError(
                    "cross_field",
                    "{text}",
                    {
                        "field": "spec",
                        "text": f"the spec, labels and annotations take {size} bytes as JSON, more than "
                        f"{MAX_OBJECT_BYTES}: the operator could not record that it handled the object; "
                        "keep bulky data out of the manifest: scores in a file (signal.file), long instrument "
                        "lists as a market of the bundle (universe.market), large kwargs in the class's own "
                        "config files",
                    },
                )
        return data

    @field_validator("api_version")
    @classmethod
    def _check_api_version(cls, value: str) -> str:
        if value != API_GROUP_VERSION:
            raise ValueError(f"apiVersion must be {API_GROUP_VERSION}, not {value!r}")
        return value

    @field_validator("kind")
    @classmethod
    def _check_kind(cls, value: str) -> str:
        expected = cls.__crd__.kind
        if value != expected:
            raise ValueError(f"kind must be {expected}, not {value!r}")
        return value

    @classmethod
    def from_manifest(cls, doc: dict[str, Any]) -> Any:
        """Parse and validate a manifest dict (raises pydantic.ValidationError)."""
        return cls.model_validate(doc)
