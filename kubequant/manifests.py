"""Reading manifests: YAML documents into API objects, with errors that name the field and the fix."""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pydantic
import yaml

from kubequant.api import API_GROUP_VERSION, KINDS, Resource
from kubequant.api.modules import CONTEXT_KEY, DEFAULT_ALLOWED_MODULES
from kubequant.errors import ValidationError


@dataclass(frozen=True)
class Document:
    """One YAML document of a manifest file."""

    source: str
    index: int
    body: Any

    @property
    def name(self) -> str:
        """``file#index Kind/name`` for messages."""
        label = f"{self.source}#{self.index}"
        if isinstance(self.body, dict):
            kind = self.body.get("kind", "?")
            name = (
                (self.body.get("metadata") or {}).get("name", "?")
                if isinstance(self.body.get("metadata"), dict)
                else "?"
            )
            label += f" {kind}/{name}"
        return label


def load_documents(text: str, source: str = "<stdin>") -> list[Document]:
    """Split a (multi-document) YAML text; a syntax error names the line."""
    try:
        bodies = [b for b in yaml.safe_load_all(text) if b is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ValidationError(
            f"not valid YAML ({getattr(err, 'problem', err)})", where=where, fix="fix the YAML syntax"
        ) from err
    return [Document(source, i, body) for i, body in enumerate(bodies)]


def validate_documents(
    docs: list[Document], allowed_modules: Sequence[str] = DEFAULT_ALLOWED_MODULES
) -> Iterator[tuple[str, list[ValidationError]]]:
    """Each document's label and its errors (empty when valid)."""
    for doc in docs:
        try:
            parse_resource(doc.body, allowed_modules)
        except InvalidManifest as err:
            yield doc.name, err.errors
        else:
            yield doc.name, []


def parse_resource(body: Any, allowed_modules: Sequence[str] = DEFAULT_ALLOWED_MODULES) -> Resource:
    """Validate one manifest body into its kind's model, or raise with every error found.

    ``allowed_modules`` are the module prefixes its class references may name (``kubequant.api.modules``).
    """
    if not isinstance(body, dict):
        raise InvalidManifest(
            [
                ValidationError(
                    "a manifest must be a mapping", where="(document)", fix="write key: value pairs"
                )
            ]
        )
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if kind not in KINDS:
        known = ", ".join(KINDS)
        hint = difflib.get_close_matches(str(kind), list(KINDS), n=1)
        fix = f"did you mean {hint[0]}?" if hint else f"use one of {known}"
        raise InvalidManifest([ValidationError(f"unknown kind {kind!r}", where="kind", fix=fix)])
    if api_version != API_GROUP_VERSION:
        raise InvalidManifest(
            [
                ValidationError(
                    f"apiVersion {api_version!r} is not served",
                    where="apiVersion",
                    fix=f"use {API_GROUP_VERSION}",
                )
            ]
        )
    try:
        return KINDS[kind].model_validate(body, context={CONTEXT_KEY: tuple(allowed_modules)})
    except pydantic.ValidationError as err:
        raise InvalidManifest(_dedupe([_translate(e, body) for e in err.errors()])) from None


def load_resources(
    path: str | Path, allowed_modules: Sequence[str] = DEFAULT_ALLOWED_MODULES
) -> list[Resource]:
    """Every object in a manifest file (``-`` is not accepted here); the first invalid one raises."""
    text = Path(path).read_text()
    resources = []
    for doc in load_documents(text, str(path)):
        try:
            resources.append(parse_resource(doc.body, allowed_modules))
        except InvalidManifest as err:
            first = err.errors[0]
            more = (
                f" (and {len(err.errors) - 1} more; see `kubequant validate -f {path}`)"
                if len(err.errors) > 1
                else ""
            )
            raise ValidationError(
                first.message + more, where=f"{doc.name}: {first.where}", fix=first.fix
            ) from None
    return resources


def _dedupe(errors: list[ValidationError]) -> list[ValidationError]:
    """A union (an int or a quantity string) reports every branch: keep the specific error of a field."""
    type_only = ("is not a valid int", "is not a valid float", "is not a valid string")
    specific = {e.where for e in errors if not e.message.endswith(type_only)}
    kept: list[ValidationError] = []
    for err in errors:
        bare = err.message.endswith(type_only)
        if bare and (err.where in specific or any(k.where == err.where for k in kept)):
            continue
        kept.append(err)
    return kept


class InvalidManifest(Exception):
    """One or more errors in a manifest."""

    def __init__(self, errors: list[ValidationError]) -> None:
        super().__init__("; ".join(e.one_line() for e in errors))
        self.errors = errors


def _path(loc: tuple[Any, ...], body: Any, error_type: str) -> str:
    """A dotted field path from a pydantic location, skipping union-branch tags that are not fields."""
    parts: list[str] = []
    node = body
    for i, key in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and key in node:
            parts.append(str(key))
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            parts[-1:] = [f"{parts[-1]}[{key}]"] if parts else [f"[{key}]"]
            node = node[key]
        elif last and error_type in ("missing", "extra_forbidden"):
            parts.append(str(key))
        else:
            node = None  # a union branch tag (int, constrained-str, …): not part of the field path
    return ".".join(parts) or "(document)"


def _translate(err: Any, body: Any) -> ValidationError:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    where = _path(tuple(err["loc"]), body, kind)
    msg = str(err["msg"])
    if kind == "cross_field":
        field = ctx.get("field")
        if field:
            where = f"{where}.{field}" if where != "(document)" else field
        message, _, fix = str(err["msg"]).partition("; ")
        return ValidationError(message, where=where, fix=fix or None)
    if kind == "missing":
        return ValidationError(
            "required field is missing", where=where, fix=f"add {where.rsplit('.', 1)[-1]}"
        )
    if kind == "extra_forbidden":
        name = where.rsplit(".", 1)[-1]
        hint = difflib.get_close_matches(name, sorted(_all_field_names()), n=1)
        fix = f"did you mean {hint[0]}?" if hint else "remove it (see `kubectl explain` for the fields)"
        return ValidationError("unknown field", where=where, fix=fix)
    if kind in ("enum", "literal_error"):
        return ValidationError(
            f"{err['input']!r} is not allowed", where=where, fix=f"use one of {ctx.get('expected')}"
        )
    if kind == "string_pattern_mismatch":
        return ValidationError(
            f"{err['input']!r} has the wrong form", where=where, fix=_pattern_fix(ctx.get("pattern", ""))
        )
    if kind.startswith("date") or kind.startswith("datetime"):
        return ValidationError(
            f"{err['input']!r} is not a date", where=where, fix="write the date as YYYY-MM-DD"
        )
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        ops = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
        bound = next(iter(ctx.values()), "?")
        return ValidationError(
            f"{err['input']!r} is out of range", where=where, fix=f"use a value {ops[kind]} {bound}"
        )
    if kind.endswith("_type") or kind.endswith("_parsing"):
        expected = kind.split("_")[0]
        return ValidationError(
            f"{err['input']!r} is not a valid {expected}", where=where, fix=f"write a {expected}"
        )
    if kind == "finite_number":
        return ValidationError(
            f"{err['input']!r} is not a finite number",
            where=where,
            fix="write a finite number (JSON, and so the API server, has no NaN or infinity)",
        )
    if kind in ("too_long", "too_short"):
        return ValidationError(msg, where=where, fix="change the number of items")
    if kind == "value_error":
        text = msg.removeprefix("Value error, ")
        return ValidationError(text, where=where, fix=None)
    return ValidationError(msg, where=where, fix=None)


_PATTERN_FIXES = {
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?": "use lower-case letters, digits and '-' (a Kubernetes object name)",
    "^(day|": "use day or Nmin, e.g. 30min or 1min",
    "^[A-Za-z_][A-Za-z0-9_]*$": "use a Python identifier (a class name)",
    "^[A-Za-z_][A-Za-z0-9_]*(": "use a dotted Python module path, e.g. qlib.contrib.strategy",
    "^([01][0-9]|2[0-3])": "use HH:MM on a 24-hour clock",
    "^/": "use an absolute path",
    "^[A-Za-z0-9._-]+$": "use letters, digits, '.', '_' or '-' (an instrument code)",
    "^(cn|us|tw)$": "use cn, us or tw",
    "^(serial|parallel)$": "use serial or parallel",
    "^(\\+|-)?": "use a Kubernetes quantity such as 500m, 2, 4Gi",
    "^(?:[^/.": "use a relative folder of '/'-separated names, without '..', '.' or empty names, e.g. cn/daily",
    "^(?:(?:[a-zA-Z0-9]": "use an image reference such as ghcr.io/org/name:tag or ghcr.io/org/name@sha256:<digest>",
}


def _pattern_fix(pattern: str) -> str:
    for prefix, fix in _PATTERN_FIXES.items():
        if pattern.startswith(prefix):
            return fix
    return f"match the pattern {pattern}"


@cache
def _all_field_names() -> set[str]:
    names: set[str] = set()
    seen: set[type] = set()

    def walk(model: type[pydantic.BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, info in model.model_fields.items():
            names.add(info.alias or name)
            for sub in _models_in(info.annotation):
                walk(sub)

    for cls in KINDS.values():
        walk(cls)
    return names


def _models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    out: list[type[pydantic.BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out += _models_in(arg)
    return out
