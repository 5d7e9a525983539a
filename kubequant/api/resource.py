"""The envelope of every kind: apiVersion, kind, metadata, and the status fields all kinds share."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import ConfigDict, Field, field_validator

from kubequant.api.base import ApiModel, CrdFacts
from kubequant.api.common import DNS_SUBDOMAIN, Condition
from kubequant.version import API_GROUP, API_VERSION

API_GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"


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


class Resource(ApiModel):
    """A kubequant custom resource; subclasses set ``spec``, ``status`` and ``__crd__``."""

    __crd__: ClassVar[CrdFacts]

    api_version: str = Field(API_GROUP_VERSION, description="kubequant.io/v1alpha1")
    kind: str = Field(description="The kind.")
    metadata: ObjectMeta = Field(description="Standard object metadata.")

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
