"""Argo CD's Lua health checks, run as Argo CD runs them, on Lua 5.1 (lupa.lua51).

Argo CD (util/lua/lua.go, ``VM.runLua`` and ``ExecuteHealthLua``) runs a health script in gopher-lua,
a Lua 5.1, with only the base, package and table libraries and a "safe" os (``time`` and ``date``)
unless the check opts in to the open libraries (``useOpenLibs``, off for argocd-cm checks); it sets
one global, ``obj``, the object converted value by value (``decodeValue``: maps and arrays become
tables, null becomes nil), takes the table the script returns, encodes it as JSON and reads
``status`` and ``message`` from it; a status that is not one of Argo CD's becomes Unknown with
"Lua returned an invalid health status". This module does the same and nothing more, so a script
that passes here uses nothing Argo CD does not give it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from lupa import lua51

HEALTH_STATUSES = ("Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing")
INVALID_STATUS = "Lua returned an invalid health status"
# Lua 5.1's standard libraries that gopher-lua opens only with useOpenLibs.
CLOSED_LIBRARIES = ("string", "math", "io", "coroutine", "debug")


class LuaScriptError(Exception):
    """The script failed, or returned something Argo CD cannot read as a health status."""


@dataclass(frozen=True)
class Health:
    """Argo CD's HealthStatus: the status code and its message ("" when the script sets none)."""

    status: str
    message: str = ""


class _NoTimestamps(yaml.SafeLoader):
    """YAML as sigs.k8s.io/yaml reads it for Argo CD's tests: a timestamp stays a string."""


_NoTimestamps.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_object(path: Path) -> dict[str, Any]:
    """A testdata object as Argo CD's harness loads it."""
    obj = yaml.load(path.read_text(), Loader=_NoTimestamps)  # a SafeLoader subclass
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a Kubernetes object")
    return obj


def _sandbox() -> Any:
    lua = lua51.LuaRuntime(register_eval=False, register_builtins=False, unpack_returned_tuples=True)
    # Strings lose their methods with the string library (gopher-lua sets the metatable in OpenString).
    lua.execute('debug.setmetatable("", nil)')
    g = lua.globals()
    safe_os = lua.table(time=g.os.time, date=g.os.date)
    for name in CLOSED_LIBRARIES:
        g[name] = None
        g.package.loaded[name] = None
    g.os = safe_os
    g.package.loaded.os = safe_os
    for unsafe in ("dofile", "loadfile"):
        g[unsafe] = None
    return lua


def _to_lua(lua: Any, value: Any) -> Any:
    """``decodeValue``: bool, number and string as they are, arrays and maps as tables, null as nil."""
    if isinstance(value, dict):
        return lua.table_from({k: _to_lua(lua, v) for k, v in value.items() if v is not None})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, v) for v in value])
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{type(value).__name__} is not a JSON value")


def _field(table: Any, key: str) -> str:
    value = table[key]
    if value is None:
        return ""
    if not isinstance(value, str):
        # json.Unmarshal of the encoded table into HealthStatus fails on a non-string.
        raise LuaScriptError(f"hs.{key} is a {type(value).__name__}, not a string")
    return value


def run_health(script: str, obj: dict[str, Any]) -> Health:
    """The health Argo CD computes for ``obj`` with ``script``."""
    lua = _sandbox()
    lua.globals().obj = _to_lua(lua, obj)
    try:
        returned = lua.execute(script)
    except lua51.LuaError as err:
        raise LuaScriptError(str(err)) from err
    if isinstance(returned, tuple):
        returned = returned[-1] if returned else None
    kind = lua51.lua_type(returned) or ("nil" if returned is None else type(returned).__name__)
    if kind != "table":
        raise LuaScriptError(f"expect table output from Lua script, not {kind}")
    keys = list(returned.keys())
    if not keys:
        raise LuaScriptError("the script returned an empty table (JSON [], not a HealthStatus)")
    status = _field(returned, "status")
    if status not in HEALTH_STATUSES:
        return Health("Unknown", INVALID_STATUS)
    return Health(status, _field(returned, "message"))
