"""The signal API's contract: one set of models validates requests and is the published OpenAPI document."""

from __future__ import annotations

import asyncio
import functools
import json
import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema_rs import (
    Draft202012Validator,  # schemathesis' own validator: ECMA regexes ("$" ends the text)
)
from openapi_spec_validator import OpenAPIV31SpecValidator
from pydantic import ValidationError

from kubequant.api.live import SignalRateLimit
from kubequant.workloads.trading.node.signal_api import BadRequest, ClientRateLimit, parse_json, parse_signal
from kubequant.workloads.trading.node.signal_schema import (
    DOCUMENT,
    SIGNAL_IN,
    TRADING_STATE_IN,
    main,
    openapi_document,
    render,
)

pytestmark = pytest.mark.unit
REPO_ROOT = Path(__file__).resolve().parents[3]
PUBLISHED = REPO_ROOT / DOCUMENT


def knows(instrument: str) -> bool:
    return instrument.startswith("SYN")


@functools.cache
def validator(name: str) -> Draft202012Validator:
    """The document's schema of ``name``, as a JSON Schema 2020-12 validator resolving the document's refs."""
    doc = openapi_document()
    return Draft202012Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]})


def test_the_document_is_a_valid_openapi_3_1_document() -> None:
    OpenAPIV31SpecValidator(openapi_document()).validate()
    broken = openapi_document() | {"paths": {"/v1/x": {"get": {"responses": {"200": {}}}}}}
    errors = list(OpenAPIV31SpecValidator(broken).iter_errors())
    assert errors, "the validator is not vacuous: a response without a description is refused"


def test_the_published_document_matches_the_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert PUBLISHED.read_text() == render(openapi_document()), (
        "docs/api/signal-api.json drifted; run `python -m kubequant.workloads.trading.node.signal_schema`"
    )
    assert main(["--check", "--out", str(PUBLISHED)]) == 0
    stale = tmp_path / "signal-api.json"
    stale.write_text(PUBLISHED.read_text().replace('"maxItems": 500', '"maxItems": 499'))
    assert main(["--check", "--out", str(stale)]) == 1
    assert "drift" in capsys.readouterr().err
    assert main(["--out", str(stale)]) == 0 and stale.read_text() == PUBLISHED.read_text()


def test_every_operation_needs_the_token_and_says_how_it_refuses() -> None:
    doc = openapi_document()
    assert doc["security"] == [{"bearerAuth": []}]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    operations = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    assert {(p, m) for p, m, _ in operations} == {
        ("/v1/signals", "post"),
        ("/v1/trading-state", "post"),
        ("/v1/orders", "get"),
        ("/v1/positions", "get"),
        ("/v1/status", "get"),
    }
    for path, method, op in operations:
        assert "security" not in op, f"{method} {path} must not opt out of the token"
        assert {"401", "429"} <= set(op["responses"]), (path, method)
        assert "Retry-After" in op["responses"]["429"]["headers"]
        if method == "post":
            assert {"400", "413", "422", "503"} <= set(op["responses"]), (path, method)


def test_the_served_schema_says_the_sessions_target_cap() -> None:
    assert openapi_document(7)["components"]["schemas"]["SignalIn"]["properties"]["targets"]["maxItems"] == 7
    eight = {"id": "a", "targets": [{"instrument": f"SYN{k:04d}", "quantity": 1} for k in range(8)]}
    assert len(parse_signal(eight, None, 8).targets) == 8
    with pytest.raises(BadRequest) as refused:
        parse_signal(eight, None, 7)
    assert (refused.value.field, refused.value.status) == ("targets", 422)


def target(**fields: Any) -> dict[str, Any]:
    return {"instrument": "SYN0001"} | fields


AGREE = [
    {"id": "a", "targets": [target(quantity=100)]},
    {"id": "a", "targets": [target(quantity=-250.5)]},
    {"id": "a", "targets": [target(quantity="1E-20")]},
    {"id": "a", "targets": [target(quantity=".5")]},
    {"id": "a", "targets": [target(weight=1)]},
    {"id": "a", "targets": [target(weight=-1.0)]},
    {"id": "a", "targets": [target(weight="0.25", quantity=None)]},
    {"id": "a:b/c@d-e_f.g", "targets": [target(quantity=1)], "limitPrices": {"SYN0001": 12.5}},
    {"id": "a", "targets": [target(quantity=1)], "limitPrices": None},
    {"id": "a", "targets": [target(quantity=1e12)]},
    # refused by both
    {"id": "a", "targets": [target(quantity=1e12 + 1)]},
    {"id": "a", "targets": [target(weight=1.0001)]},
    {"id": "a", "targets": [target(weight=0.1, quantity=1)]},
    {"id": "a", "targets": [target()]},
    {"id": "a", "targets": [target(weight=None, quantity=None)]},
    {"id": "a", "targets": [target(quantity=True)]},
    {"id": "a", "targets": [target(quantity="1_000")]},
    {"id": "a", "targets": [target(quantity=" 1")]},
    {"id": "a", "targets": [target(quantity="NaN")]},
    {"id": "a", "targets": [target(quantity=[1])]},
    {"id": "a", "targets": [target(quantity=1, side="BUY")]},
    {"id": "a", "targets": [{"quantity": 1}]},
    {"id": "a", "targets": [{"instrument": "S" * 33, "quantity": 1}]},
    {"id": "a", "targets": [{"instrument": "SYN 1", "quantity": 1}]},
    {"id": "a", "targets": [target(quantity=1)], "limitPrices": {"SYN0001": 0}},
    {"id": "a", "targets": [target(quantity=1)], "limitPrices": {"../x": 1}},
    {"id": "a", "targets": [target(quantity=1)], "limitPrices": []},
    {"id": "a", "targets": []},
    {"id": "a", "targets": "SYN0001"},
    {"id": "a" * 129, "targets": [target(quantity=1)]},
    {"id": "a\n", "targets": [target(quantity=1)]},
    {"id": "", "targets": [target(quantity=1)]},
    {"id": 7, "targets": [target(quantity=1)]},
    {"targets": [target(quantity=1)]},
    {"id": "a", "targets": [target(quantity=1)], "extra": 1},
    [],
    None,
    "signal",
]


@pytest.mark.parametrize("body", AGREE, ids=[json.dumps(b)[:60] for b in AGREE])
def test_the_schema_and_the_server_agree_on_what_is_valid(body: Any) -> None:
    by_schema = validator("SignalIn").is_valid(body)
    try:
        SIGNAL_IN.validate_python(body)
        by_server = True
    except ValidationError:
        by_server = False
    assert by_schema == by_server


@pytest.mark.parametrize(
    "body",
    [
        {"state": "HALTED", "reason": "manual"},
        {"state": "halted", "reason": "manual"},
        {"state": "ACTIVE", "reason": ""},
        {"state": "ACTIVE", "reason": "   "},
        {"state": "ACTIVE", "reason": "r" * 501},
        {"state": "ACTIVE"},
        {"state": "ACTIVE", "reason": "x", "by": "me"},
    ],
)
def test_the_trading_state_schema_and_the_server_agree(body: dict[str, Any]) -> None:
    try:
        TRADING_STATE_IN.validate_python(body)
        by_server = True
    except ValidationError:
        by_server = False
    assert validator("TradingStateIn").is_valid(body) == by_server


NUMBERS = st.one_of(
    st.integers(min_value=-(10**14), max_value=10**14),
    st.floats(allow_nan=False, allow_infinity=False),  # not JSON; refused as tested below
    st.sampled_from(["1", "-2.5", "1e3", ".5", "5.", "1_0", " 1", "NaN", "Infinity", "0x10", "", "1e99"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=1),
)
TARGETS = st.fixed_dictionaries(
    {},
    optional={
        "instrument": st.sampled_from(["SYN0001", "SYN0002", "SYN 1", "", "a" * 33, "x/y", 5]),
        "weight": NUMBERS,
        "quantity": NUMBERS,
        "note": st.just("x"),
    },
)
BODIES = st.fixed_dictionaries(
    {},
    optional={
        "id": st.sampled_from(["a", "k-1/2", "", "a b", "a\n", 1, None]),
        "targets": st.one_of(st.lists(TARGETS, max_size=3), st.just("x")),
        "limitPrices": st.one_of(st.none(), st.dictionaries(st.sampled_from(["SYN0001", "no pe"]), NUMBERS)),
        "extra": st.just(1),
    },
)


def _out_of_range_string(err: ValidationError) -> bool:
    """A number written as a string beyond its bounds: the one refusal the schema's string form cannot say."""
    bounds = {"less_than_equal", "greater_than_equal", "greater_than"}
    return all(e["type"] in bounds and isinstance(e["input"], str) for e in err.errors())


@settings(max_examples=300, deadline=None)
@given(BODIES)
def test_any_body_is_valid_to_the_schema_exactly_when_the_server_takes_it(body: dict[str, Any]) -> None:
    by_schema = validator("SignalIn").is_valid(body)
    try:
        SIGNAL_IN.validate_python(body)
    except ValidationError as err:
        assert not by_schema or _out_of_range_string(err), (body, err.errors())
    else:
        assert by_schema, body


def test_a_number_in_a_string_is_bounded_by_the_server() -> None:
    for text in ("1e13", "-1E+999999999"):
        with pytest.raises(BadRequest) as refused:
            parse_signal({"id": "a", "targets": [target(quantity=text)]})
        assert refused.value.field == "targets[0].quantity" and "out of range" in refused.value.error
    with pytest.raises(BadRequest) as refused:
        parse_signal({"id": "a", "targets": [target(weight="2")]})
    assert refused.value.field == "targets[0].weight"


INJECTIONS = [
    ({"id": "1'; DROP TABLE orders;--", "targets": [target(quantity=1)]}, "id"),
    ({"id": "<script>alert(1)</script>", "targets": [target(quantity=1)]}, "id"),
    ({"id": "a\x00b", "targets": [target(quantity=1)]}, "id"),
    (
        {"id": "a", "targets": [{"instrument": "<script>alert(1)</script>", "quantity": 1}]},
        "targets[0].instrument",
    ),
    ({"id": "a", "targets": [{"instrument": "../../etc/passwd", "quantity": 1}]}, "targets[0].instrument"),
    ({"id": "a", "targets": [{"instrument": "SYN0001' OR '1'='1", "quantity": 1}]}, "targets[0].instrument"),
    ({"id": "a", "targets": [{"instrument": "SYN\x000001", "quantity": 1}]}, "targets[0].instrument"),
    ({"id": "a", "targets": [target(quantity="1; DROP TABLE orders")]}, "targets[0].quantity"),
    ({"id": "a", "targets": [target(quantity=10**400)]}, "targets[0].quantity"),
    ({"id": "a", "targets": [target(quantity=float("nan"))]}, "targets[0].quantity"),
    ({"id": "a", "targets": [target(weight=float("-inf"))]}, "targets[0].weight"),
    ({"id": "a", "targets": [target(quantity=1)], "limitPrices": {"SYN0001": 1e300}}, "limitPrices.SYN0001"),
    ({"id": "a", "targets": [target(quantity=1)], "limitPrices": {"../../x": 1}}, "limitPrices.../../x"),
    ({"id": "a", "targets": [target(quantity=1)], "<img src=x>": 1}, "<img src=x>"),
    ({"id": "a", "targets": [target(quantity=1, **{"\x00": 1})]}, "targets[0].\x00"),
]


@pytest.mark.parametrize("body,field", INJECTIONS, ids=[f for _, f in INJECTIONS])
def test_injection_payloads_are_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_signal(body, knows)
    assert (refused.value.status, refused.value.field) == (422, field), refused.value.body()
    assert refused.value.error and refused.value.fix
    assert all(len(text) < 200 for text in refused.value.body().values())  # never the whole payload echoed


def test_nan_and_huge_literals_in_the_json_text_are_refused_naming_the_field() -> None:
    for raw, field in [
        (b'{"id": "a", "targets": [{"instrument": "SYN0001", "quantity": NaN}]}', "targets[0].quantity"),
        (b'{"id": "a", "targets": [{"instrument": "SYN0001", "weight": Infinity}]}', "targets[0].weight"),
        (b'{"id": "a", "targets": [{"instrument": "SYN0001", "quantity": 1e400}]}', "targets[0].quantity"),
    ]:
        with pytest.raises(BadRequest) as refused:
            parse_signal(parse_json(raw), knows)
        assert (refused.value.status, refused.value.field) == (422, field)
        assert "finite" in refused.value.error


def test_a_signal_id_is_an_opaque_key_never_a_path() -> None:
    """``/`` and ``.`` are allowed in ids (scheduled children are ``rebalance-<day>/<k>``); an id names no file."""
    signal = parse_signal({"id": "../../etc/passwd", "targets": [target(quantity=100)]}, knows)
    assert signal.signal_id == "../../etc/passwd"


def test_numbers_keep_their_decimal_value() -> None:
    signal = parse_signal(
        {
            "id": "a",
            "targets": [target(quantity=0.1), {"instrument": "SYN0002", "weight": "0.05"}],
            "limitPrices": {"SYN0001": 12.3456},
        },
        knows,
    )
    first, second = signal.targets
    assert first.quantity == Decimal("0.1") and first.limit_price == Decimal("12.3456")
    assert second.weight == Decimal("0.05") and second.quantity is None and second.limit_price is None


def test_the_rate_limit_refuses_beyond_the_burst_then_refills_per_client() -> None:
    async def main() -> None:
        limit = ClientRateLimit(SignalRateLimit(requests_per_second=20, burst=5))
        assert [await limit.admit("10.0.0.1") for _ in range(6)] == [True] * 5 + [False]
        assert await limit.admit("10.0.0.2")  # another client has its own bucket
        assert limit.retry_after == "1"
        await asyncio.sleep(0.2)  # 20/s: room for about 4 more
        assert await limit.admit("10.0.0.1")

    asyncio.run(main())


def test_the_rate_limit_forgets_idle_clients_rather_than_grow_without_bound() -> None:
    async def main() -> None:
        limit = ClientRateLimit(SignalRateLimit(requests_per_second=1000, burst=1000), max_clients=3)
        for k in range(10):
            assert await limit.admit(f"10.0.0.{k}")
        assert len(limit._buckets) <= 3
        assert "10.0.0.9" in limit._buckets

    asyncio.run(main())


def test_the_default_limit_never_throttles_the_documented_rate() -> None:
    default = SignalRateLimit()
    assert default.requests_per_second >= 1000 and (default.burst or default.requests_per_second) >= 1000
    assert math.ceil(1 / default.requests_per_second) <= 1


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False) | st.integers(-(10**12), 10**12))
def test_a_json_number_becomes_the_decimal_it_was_written_as(number: float | int) -> None:
    """As the server always did: a float is the Decimal of its shortest repr, never its binary expansion."""
    signal = parse_signal(json.loads(json.dumps({"id": "a", "targets": [target(quantity=number)]})))
    expected = Decimal(repr(number)) if isinstance(number, float) else Decimal(number)
    assert signal.targets[0].quantity == expected
    assert str(signal.targets[0].quantity) == str(expected)


def test_a_limit_price_to_a_market_only_venue_is_refused_naming_the_field() -> None:
    from kubequant.api.broker_capabilities import limit_price_refusal

    body = {
        "id": "s1",
        "targets": [{"instrument": "SH600000", "quantity": 100}],
        "limitPrices": {"SH600000": 10.5},
    }
    assert limit_price_refusal("paper") is None
    assert parse_signal(body, None, 8, limit_price_refusal("paper")).targets[0].limit_price is not None
    refusal = limit_price_refusal("xueqiu")
    assert refusal is not None
    with pytest.raises(BadRequest) as raised:
        parse_signal(body, None, 8, refusal)
    assert raised.value.field == "limitPrices.SH600000"
    assert "market orders only" in raised.value.error and raised.value.fix.startswith("send the target")
    market = {"id": "s2", "targets": [{"instrument": "SH600000", "quantity": 100}]}
    assert parse_signal(market, None, 8, refusal).targets[0].limit_price is None  # no limit price: fine


def test_a_sessions_document_enumerates_its_instruments_and_a_huge_listing_keeps_the_pattern() -> None:
    from kubequant.workloads.trading.node.signal_schema import (
        INSTRUMENT_PATTERN,
        MAX_LISTED_INSTRUMENTS,
        openapi_document,
        with_instruments,
    )

    generic = openapi_document()
    held = with_instruments(generic, ["SYN0002", "SYN0001", "SYN0002"])
    target = held["components"]["schemas"]["TargetIn"]["properties"]["instrument"]
    assert target["enum"] == ["SYN0001", "SYN0002"] and target["pattern"] == INSTRUMENT_PATTERN
    keys = held["components"]["schemas"]["SignalIn"]["properties"]["limitPrices"]["anyOf"][0]["propertyNames"]
    assert keys["enum"] == ["SYN0001", "SYN0002"]
    assert "2 instruments" in held["info"]["description"]
    assert "enum" not in generic["components"]["schemas"]["TargetIn"]["properties"]["instrument"]
    too_many = [f"S{i:06d}" for i in range(MAX_LISTED_INSTRUMENTS + 1)]
    assert with_instruments(generic, too_many) == generic
    assert with_instruments(generic, None) == generic and with_instruments(generic, []) == generic
