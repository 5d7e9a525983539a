"""The module allow-list, enforced where qlib turns names into classes, for the length of a run.

Validation already refuses a manifest whose class references name a module outside the allow-list
(``kubequant.api.modules``). This guard is the second line, in the process that runs the code: a
manifest edited after validation (a ConfigMap changed by hand) or a class name qlib resolves from
a plain string deep inside kwargs still cannot make qlib import a module outside the list, and
whatever qlib resolves from a name must be a class defined in an allowed module (not a function
such as ``os.system``, nor a class re-exported from elsewhere).

Every name qlib resolves goes through ``qlib.utils.mod.get_module_by_module_path`` (called by
``get_callable_kwargs``, called by ``init_instance_by_config``); both are replaced while the
guard is active, and restored after.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

from kubequant.api.modules import FIX_HINT, module_allowed
from kubequant.errors import ConfigError

_LOCK = threading.Lock()


class ForbiddenClass(ConfigError):
    """qlib was asked to load a class from a module outside the allow-list."""


def _refuse(what: str, prefixes: Sequence[str]) -> ForbiddenClass:
    return ForbiddenClass(
        f"{what} is not allowed (allowed modules: {', '.join(prefixes)})",
        where="(class reference)",
        fix=FIX_HINT,
    )


def _named(config: Any) -> bool:
    """Whether qlib resolves this config from a name (a string), rather than from a class given by code."""
    if isinstance(config, str):
        return True
    if isinstance(config, dict):
        key = "class" if "class" in config else "func"
        return isinstance(config.get(key), str)
    return False


# The allow-lists of the guards now active (innermost last); the replacements pass through when empty.
_ACTIVE: list[tuple[str, ...]] = []
_INSTALLED: dict[str, Any] = {}


def _install() -> None:
    """Replace qlib's name resolution by checked versions, once per process (idempotent)."""
    import qlib.utils  # noqa: F401  (its own references to the originals are among those replaced)
    from qlib.utils import mod

    if _INSTALLED:
        return
    original_module = mod.get_module_by_module_path
    original_callable = mod.get_callable_kwargs

    def get_module_by_module_path(module_path: str | ModuleType) -> ModuleType:
        prefixes = _ACTIVE[-1] if _ACTIVE else None
        if prefixes is not None and not isinstance(module_path, ModuleType):
            if not module_allowed(str(module_path), prefixes):
                raise _refuse(f"module {module_path}", prefixes)
        module: ModuleType = original_module(module_path)
        return module

    def get_callable_kwargs(config: Any, default_module: Any = None) -> tuple[Any, dict[str, Any]]:
        klass, kwargs = original_callable(config, default_module)
        prefixes = _ACTIVE[-1] if _ACTIVE else None
        if prefixes is not None and _named(config):
            name = f"{getattr(klass, '__module__', '?')}.{getattr(klass, '__qualname__', klass)!s}"
            if not isinstance(klass, type):
                raise _refuse(f"{name} (not a class)", prefixes)
            if not module_allowed(klass.__module__, prefixes):
                raise _refuse(f"class {name}", prefixes)
        return klass, kwargs

    # Modules that imported the originals by name hold their own references: replace those too.
    # Modules imported later take the replacements from qlib.utils or qlib.utils.mod.
    replacements = {
        id(original_module): get_module_by_module_path,
        id(original_callable): get_callable_kwargs,
    }
    for module in list(sys.modules.values()):
        if isinstance(module, ModuleType) and module.__name__.startswith("qlib"):
            for attr, value in list(vars(module).items()):
                if id(value) in replacements and value in (original_module, original_callable):
                    setattr(module, attr, replacements[id(value)])
    _INSTALLED.update(module=get_module_by_module_path, callable=get_callable_kwargs)


@contextlib.contextmanager
def guarded_imports(prefixes: Sequence[str]) -> Iterator[None]:
    """While active, qlib loads named classes only from modules under ``prefixes``."""
    with _LOCK:
        _install()
        _ACTIVE.append(tuple(prefixes))
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE.pop()
