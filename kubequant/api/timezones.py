"""IANA time zone names, from the pinned ``tzdata`` package: the same list on every machine.

The list comes from ``tzdata``'s own ``zones`` file, never from the machine's /usr/share/zoneinfo,
so that the CRDs generated from it (a CEL membership rule) do not depend on where they were
generated, and every accepted name resolves at run time (``zoneinfo`` falls back to ``tzdata``).
The version is pinned in pyproject.toml and requirements.lock; a newer release adds zones through
`make lock` and `kubequant crds generate`.
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib import metadata, resources
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

# "Factory" is tzdata's placeholder for an unconfigured machine (its abbreviation is "-00"): no
# exchange keeps that clock.
_NOT_A_PLACE = frozenset({"Factory"})
MAX_ZONE_LENGTH = 64
EXAMPLES = "Asia/Shanghai, America/New_York, Europe/London or UTC"


@cache
def time_zones() -> tuple[str, ...]:
    """Every IANA zone name ``tzdata`` ships (canonical zones and their links), sorted."""
    text = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8")
    return tuple(sorted({z.strip() for z in text.splitlines() if z.strip()} - _NOT_A_PLACE))


def tzdata_version() -> str:
    """The installed ``tzdata`` release the zone list comes from."""
    return metadata.version("tzdata")


def _known_zone(name: str) -> str:
    zones = time_zones()
    if name in zones:
        return name
    by_fold = {z.casefold(): z for z in zones}
    hint = by_fold.get(name.casefold()) or next(iter(difflib.get_close_matches(name, zones, n=1)), None)
    fix = f"did you mean {hint}?" if hint else f"use an IANA zone name such as {EXAMPLES}"
    # The "; " splits message from fix in kubequant.manifests.
    raise PydanticCustomError(
        "cross_field", "{text}", {"field": "", "text": f"{name!r} is not an IANA time zone; {fix}"}
    )


def _cel_rule() -> dict[str, str]:
    names = ", ".join(f"'{z}'" for z in time_zones())
    return {
        "rule": f"self in [{names}]",
        "message": f"must be an IANA time zone name (tz database), such as {EXAMPLES}",
    }


TimeZone = Annotated[
    str,
    StringConstraints(max_length=MAX_ZONE_LENGTH),
    AfterValidator(_known_zone),
    Field(json_schema_extra={"x-kubernetes-validations": [_cel_rule()]}),
]
