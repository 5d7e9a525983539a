"""Which Python modules a manifest may load classes from, and how deep and big free-form kwargs may be.

A ClassReference (a model, a handler, a custom strategy) names a class that qlib's
``init_instance_by_config`` imports and calls; ``{class: Popen, module: subprocess}`` would run a
command. Only modules under an allowed prefix may be named: the built-in ``qlib``, ``kubequant`` and
``lightgbm``, plus what an admin (the chart's ``workloadPolicy.allowedModules``) or a local user
(``--allow-module``) adds. A prefix matches whole dotted segments: ``qlib`` allows ``qlib`` and
``qlib.contrib.model``, never ``qlibevil``.

qlib also instantiates class configs found inside kwargs (a handler's ``learn_processors``, an
executor's ``inner_strategy``), so those are checked too: a nested mapping with ``module_path``, or
with a dotted ``class``/``func`` string, must name an allowed module. Strings qlib would resolve
without such a mapping are refused at run time by the workload's import guard.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from typing import Any

DEFAULT_ALLOWED_MODULES: tuple[str, ...] = ("qlib", "kubequant", "lightgbm")
MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
_MODULE = re.compile(MODULE_PATTERN)
# Bounds on free-form kwargs: deeper nesting than any real config, and recursion in the YAML
# dumper, JSON encoder and kopf's own copies stays far from Python's limit.
MAX_KWARGS_DEPTH = 32
# The pydantic validation context key that carries the allowed prefixes.
CONTEXT_KEY = "allowed_modules"
FIX_HINT = (
    "use a class from an allowed module (qlib, kubequant, lightgbm by default), or have it allowed: "
    "--allow-module PREFIX for kubequant run/validate, workloadPolicy.allowedModules in the chart"
)


class BadModulePrefix(ValueError):
    """An allow-list entry that is not a dotted module path."""


def check_prefix(prefix: str) -> str:
    """The prefix itself, if it is a dotted module path (``acme.research``); else raise."""
    if not isinstance(prefix, str) or not _MODULE.match(prefix) or len(prefix) > 256:
        raise BadModulePrefix(
            f"{prefix!r} is not a module prefix; write a dotted Python module path such as acme.research "
            "(no leading or doubled dots, no slashes, no file names)"
        )
    return prefix


def module_allow_list(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The built-in prefixes plus ``extra`` (each checked), without duplicates, in order."""
    out: list[str] = []
    for prefix in (*DEFAULT_ALLOWED_MODULES, *extra):
        if check_prefix(prefix) not in out:
            out.append(prefix)
    return tuple(out)


def module_allowed(module: str, prefixes: Iterable[str]) -> bool:
    """Whether ``module`` is one of ``prefixes`` or inside one (whole dotted segments only)."""
    if not isinstance(module, str) or not _MODULE.match(module):
        return False
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def kwargs_depth(value: Any) -> int:
    """Nesting depth of mappings and lists (a scalar is 0, ``{a: 1}`` is 1); iterative, never recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list | tuple):
            children = node
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if depth > MAX_KWARGS_DEPTH + 1:
            return depth  # deep enough to refuse; no need to walk a crafted 10,000-level tower
        stack.extend((child, depth) for child in children)
    return deepest


def non_finite_numbers(kwargs: Any, path: str = "kwargs") -> Iterator[str]:
    """Field paths of the NaN and infinite floats inside ``kwargs`` (JSON, and a cluster, cannot carry them)."""
    stack: list[tuple[Any, str]] = [(kwargs, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            yield where
        elif isinstance(node, dict):
            stack.extend((child, f"{where}.{key}") for key, child in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(node))


def nested_class_modules(kwargs: Any, path: str = "kwargs") -> Iterator[tuple[str, str]]:
    """(field path, module) of every class config qlib could instantiate from inside ``kwargs``.

    A mapping with ``module_path`` names its module there; a dotted ``class`` or ``func`` string
    (``subprocess.Popen``) names it in its prefix. Paths use the manifest's own keys.
    """
    stack: list[tuple[Any, str]] = [(kwargs, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            for key in ("class", "func"):
                target = node.get(key)
                if isinstance(target, str) and "." in target:
                    yield f"{where}.{key}", target.rsplit(".", 1)[0]
            if "module_path" in node:
                module = node["module_path"]
                yield f"{where}.module_path", module if isinstance(module, str) else repr(module)
            stack.extend((child, f"{where}.{key}") for key, child in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(node))
