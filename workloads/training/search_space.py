"""The TrainingJob's ``tune.searchSpace`` as a Ray Tune param space (pure: no Ray runtime needed)."""

from __future__ import annotations

import math
from typing import Any

from ray import tune

from kubequant.api.training import ParamDistribution, ParamSpace
from kubequant.errors import ValidationError

FIELD = "spec.tune.searchSpace"


def to_tune_space(search_space: dict[str, ParamSpace]) -> dict[str, Any]:
    """Translate each ParamSpace into the Ray Tune sampler of the same distribution.

    randint's ``high`` is exclusive (as in Ray Tune and numpy); a choice samples ``values`` (numbers; kept
    as ints when every candidate is a whole number, so integer model kwargs such as ``num_leaves`` stay
    ints) or ``categories`` (strings).
    """
    return {name: _sampler(name, space) for name, space in search_space.items()}


def _sampler(name: str, space: ParamSpace) -> Any:
    where = f"{FIELD}.{name}"
    match space.distribution:
        case ParamDistribution.UNIFORM:
            low, high = _bounds(where, space)
            return tune.uniform(low, high)
        case ParamDistribution.LOGUNIFORM:
            low, high = _bounds(where, space)
            if low <= 0:
                raise ValidationError(
                    f"loguniform needs low > 0, got {low}",
                    where=f"{where}.low",
                    fix="set low to a positive number",
                )
            return tune.loguniform(low, high)
        case ParamDistribution.RANDINT:
            low, high = _bounds(where, space)
            for field, value in (("low", low), ("high", high)):
                if not float(value).is_integer():
                    raise ValidationError(
                        f"randint bounds are integers, got {field}={value}",
                        where=f"{where}.{field}",
                        fix="use whole numbers (high is exclusive), or distribution: uniform",
                    )
            return tune.randint(int(low), int(high))
        case ParamDistribution.CHOICE:
            return tune.choice(_candidates(where, space))
    raise ValidationError(  # pragma: no cover - the enum is exhaustive; kept for a future distribution
        f"unknown distribution {space.distribution!r}",
        where=f"{where}.distribution",
        fix="use uniform, loguniform, randint or choice",
    )


def _bounds(where: str, space: ParamSpace) -> tuple[float, float]:
    if space.low is None or space.high is None:
        missing = "low" if space.low is None else "high"
        raise ValidationError(
            f"{space.distribution} needs low and high",
            where=f"{where}.{missing}",
            fix="set both low and high, with high above low",
        )
    if not (math.isfinite(space.low) and math.isfinite(space.high)) or space.low >= space.high:
        raise ValidationError(
            f"{space.distribution} needs finite low < high, got low={space.low} high={space.high}",
            where=f"{where}.high",
            fix="set high above low",
        )
    return space.low, space.high


def _candidates(where: str, space: ParamSpace) -> list[Any]:
    if (space.values is None) == (space.categories is None):
        raise ValidationError(
            "choice needs exactly one of values (numbers) or categories (strings)",
            where=f"{where}.values",
            fix="set values or categories, not both and not neither",
        )
    if space.categories is not None:
        if not space.categories:
            raise ValidationError(
                "choice has no categories", where=f"{where}.categories", fix="list at least one category"
            )
        return list(space.categories)
    values = list(space.values or [])
    if not values:
        raise ValidationError("choice has no values", where=f"{where}.values", fix="list at least one value")
    if all(float(v).is_integer() for v in values):
        return [int(v) for v in values]
    return [float(v) for v in values]
