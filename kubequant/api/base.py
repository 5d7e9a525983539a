"""The pieces every kubequant API model is made of: camelCase fields, cross-field rules, CRD facts.

A cross-field rule is written once, as a CEL expression for the API server and a Python check for
``kubequant validate`` and ``kubequant run``; both come from the same ``Rule``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class Rule:
    """A cross-field rule: CEL for the API server, ``check`` for Python; ``field`` is the path it blames."""

    cel: str
    message: str
    field: str = ""
    check: Callable[[Any], bool] | None = None
    # A transition rule compares with the stored object (``oldSelf``); only the API server can check it.
    transition: bool = False

    def as_validation(self) -> dict[str, Any]:
        """Render as one ``x-kubernetes-validations`` entry."""
        out: dict[str, Any] = {"rule": self.cel, "message": self.message}
        if self.field:
            out["fieldPath"] = "." + self.field
            # A transition rule refuses a change, not a value: the API's "Forbidden", as for immutability.
            out["reason"] = "FieldValueForbidden" if self.transition else "FieldValueInvalid"
        return out


def _add_rules_to_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    schema.pop("title", None)
    rules: tuple[Rule, ...] = getattr(cls, "__rules__", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.as_validation() for r in rules]


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields and non-finite numbers refused, rules enforced."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_add_rules_to_schema,
        use_enum_values=True,
        # JSON has no NaN or infinity: the API server could never store one, and no limit, cost or
        # cash amount means anything as one.
        allow_inf_nan=False,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self) -> ApiModel:
        for rule in type(self).__rules__:
            if rule.check is not None and not rule.check(self):
                raise PydanticCustomError("cross_field", rule.message, {"field": rule.field})
        return self

    def to_manifest(self) -> dict[str, Any]:
        """The object as it is written in YAML: camelCase, unset optionals left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


@dataclass(frozen=True)
class PrinterColumn:
    """One ``additionalPrinterColumns`` entry of a CRD."""

    name: str
    json_path: str
    type: str = "string"
    format: str | None = None
    description: str = ""
    priority: int = 0

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.format:
            out["format"] = self.format
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class CrdFacts:
    """What a CRD says about a kind besides its schema."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    columns: tuple[PrinterColumn, ...]
    categories: tuple[str, ...] = ("kubequant",)
    namespaced: bool = True
    description: str = ""
    # Spec fields that may change after creation; every other spec field is immutable when set.
    mutable_spec_fields: tuple[str, ...] | None = None
    extra_spec_rules: tuple[Rule, ...] = field(default_factory=tuple)
