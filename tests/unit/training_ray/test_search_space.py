"""The search-space translation: every distribution, its bounds, and bad input named by field."""

from __future__ import annotations

import math

import numpy as np
import pytest
from ray.tune.search.sample import Categorical, Float, Integer

from kubequant.api.training import ParamSpace, Tune
from kubequant.errors import ValidationError
from kubequant.workloads.training.search_space import to_tune_space

pytestmark = pytest.mark.unit

N = 4000


def _samples(domain, n: int = N) -> list:
    return list(domain.sample(size=n, random_state=np.random.default_rng(7)))


def test_uniform_samples_stay_in_range_and_spread_evenly() -> None:
    space = to_tune_space({"colsample_bytree": ParamSpace(distribution="uniform", low=0.5, high=0.9)})
    domain = space["colsample_bytree"]
    assert isinstance(domain, Float)
    assert (domain.lower, domain.upper) == (0.5, 0.9)
    xs = np.array(_samples(domain))
    assert xs.min() >= 0.5 and xs.max() < 0.9
    # even spread: each quarter of the range gets about a quarter of the draws
    counts, _ = np.histogram(xs, bins=4, range=(0.5, 0.9))
    assert all(abs(c / N - 0.25) < 0.04 for c in counts), counts


def test_loguniform_is_uniform_in_log_space() -> None:
    space = to_tune_space({"learning_rate": ParamSpace(distribution="loguniform", low=1e-3, high=1e-1)})
    domain = space["learning_rate"]
    assert isinstance(domain, Float)
    xs = np.array(_samples(domain))
    assert xs.min() >= 1e-3 and xs.max() <= 1e-1
    # the median of a log-uniform draw is the geometric mean (1e-2), far below the arithmetic one (0.0505)
    assert math.isclose(float(np.median(xs)), 1e-2, rel_tol=0.15)
    counts, _ = np.histogram(np.log10(xs), bins=2, range=(-3, -1))
    assert all(abs(c / N - 0.5) < 0.04 for c in counts), counts


def test_randint_high_is_exclusive_and_every_integer_is_drawn() -> None:
    space = to_tune_space({"num_leaves": ParamSpace(distribution="randint", low=16, high=20)})
    domain = space["num_leaves"]
    assert isinstance(domain, Integer)
    xs = _samples(domain)
    assert set(xs) == {16, 17, 18, 19}
    assert all(isinstance(x, int | np.integer) for x in xs)


def test_randint_rejects_fractional_bounds_naming_the_field() -> None:
    with pytest.raises(ValidationError) as err:
        to_tune_space({"max_depth": ParamSpace(distribution="randint", low=2.5, high=8)})
    assert err.value.where == "spec.tune.searchSpace.max_depth.low"
    assert "whole numbers" in (err.value.fix or "")


def test_choice_of_whole_numbers_stays_integer() -> None:
    space = to_tune_space({"num_leaves": ParamSpace(distribution="choice", values=[31, 63, 127])})
    domain = space["num_leaves"]
    assert isinstance(domain, Categorical)
    assert domain.categories == [31, 63, 127]
    assert all(type(c) is int for c in domain.categories)
    assert set(_samples(domain)) == {31, 63, 127}


def test_choice_of_fractional_values_stays_float() -> None:
    space = to_tune_space({"lambda_l1": ParamSpace(distribution="choice", values=[0, 0.5, 1])})
    assert space["lambda_l1"].categories == [0.0, 0.5, 1.0]
    assert all(type(c) is float for c in space["lambda_l1"].categories)


def test_choice_of_categories_samples_strings() -> None:
    space = to_tune_space({"boosting": ParamSpace(distribution="choice", categories=["gbdt", "dart"])})
    domain = space["boosting"]
    assert isinstance(domain, Categorical)
    assert set(_samples(domain)) == {"gbdt", "dart"}


def test_a_manifest_search_space_translates_every_entry() -> None:
    tune = Tune.model_validate(
        {
            "numSamples": 8,
            "maxConcurrentTrials": 2,
            "searchSpace": {
                "learning_rate": {"distribution": "loguniform", "low": 0.01, "high": 0.2},
                "colsample_bytree": {"distribution": "uniform", "low": 0.5, "high": 1.0},
                "num_leaves": {"distribution": "randint", "low": 8, "high": 64},
                "boosting": {"distribution": "choice", "categories": ["gbdt", "goss"]},
            },
        }
    )
    space = to_tune_space(tune.search_space)
    assert list(space) == ["learning_rate", "colsample_bytree", "num_leaves", "boosting"]
    assert [type(d) for d in space.values()] == [Float, Float, Integer, Categorical]


@pytest.mark.parametrize(
    ("space", "where"),
    [
        # model_construct skips the API rules, as a spec built in code (not from YAML) could
        (ParamSpace.model_construct(distribution="uniform", low=None, high=1.0), "x.low"),
        (ParamSpace.model_construct(distribution="uniform", low=2.0, high=1.0), "x.high"),
        (ParamSpace.model_construct(distribution="loguniform", low=0.0, high=1.0), "x.low"),
        (ParamSpace.model_construct(distribution="randint", low=1.0, high=math.inf), "x.high"),
        (ParamSpace.model_construct(distribution="choice", values=None, categories=None), "x.values"),
        (ParamSpace.model_construct(distribution="choice", values=[1.0], categories=["a"]), "x.values"),
        (ParamSpace.model_construct(distribution="choice", values=[], categories=None), "x.values"),
        (ParamSpace.model_construct(distribution="choice", values=None, categories=[]), "x.categories"),
    ],
)
def test_bad_spaces_name_the_field_and_the_fix(space: ParamSpace, where: str) -> None:
    with pytest.raises(ValidationError) as err:
        to_tune_space({"x": space})
    assert err.value.where == f"spec.tune.searchSpace.{where}"
    assert err.value.fix
