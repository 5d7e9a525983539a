"""The signal API's wire models: what the server validates with, and its OpenAPI 3.1 document.

One set of pydantic models is both the request validation (compiled once, at import) and the
contract published at ``/openapi.json`` and in ``docs/api/signal-api.json``, so the two cannot
drift. What a JSON schema cannot say (a target per instrument, a limit price only for a target's
instrument, an instrument the venue lists) is checked after validation and written in the
operations' descriptions. ``python -m kubequant.workloads.trading.node.signal_schema [--check]`` writes
(or drift-checks) the document.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from kubequant.api.live import LiveTradingSessionStatus, SignalApi, TradingState
from kubequant.workloads.trading.model.orders import OrderStatus
from kubequant.workloads.trading.risk.trading_state import MAX_REASON

INSTRUMENT_PATTERN = r"^[A-Za-z0-9._-]{1,32}$"  # kubequant.api.common.InstrumentCode
SIGNAL_ID_PATTERN = r"^[A-Za-z0-9._:@/-]{1,128}$"
# A number written as a JSON string: plain or scientific decimal notation, nothing else (no "_",
# no blanks, no NaN); the same expression in the schema and in the server, so they agree.
DECIMAL_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?$"
MAX_NUMBER = Decimal("1E12")  # no quantity or price of a real order comes near it
DEFAULT_MAX_TARGETS: int = SignalApi.model_fields["max_targets"].default
HARD_MAX_TARGETS = 10_000  # SignalApi.max_targets' upper bound
DOCUMENT = Path("docs/api/signal-api.json")
_DECIMAL_TEXT = re.compile(DECIMAL_PATTERN)


def _decimal_text(value: Any) -> Any:
    # Strings must look like a number before Decimal() sees them (it would also take "1_0" or " 1").
    if type(value) is str and _DECIMAL_TEXT.fullmatch(value) is None:
        raise PydanticCustomError("decimal_parsing", "not a number")
    return value


def _number_schema(minimum: int | Decimal, maximum: int | Decimal, exclusive_minimum: bool = False) -> Any:
    low = "exclusiveMinimum" if exclusive_minimum else "minimum"
    return WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", low: float(minimum), "maximum": float(maximum)},
                {"type": "string", "pattern": DECIMAL_PATTERN},
            ]
        }
    )


Number = Annotated[
    Decimal,
    BeforeValidator(_decimal_text),
    Field(ge=-MAX_NUMBER, le=MAX_NUMBER, allow_inf_nan=False),
    _number_schema(-MAX_NUMBER, MAX_NUMBER),
]
Weight = Annotated[
    Decimal,
    BeforeValidator(_decimal_text),
    Field(ge=-1, le=1, allow_inf_nan=False),
    _number_schema(-1, 1),
]
Price = Annotated[
    Decimal,
    BeforeValidator(_decimal_text),
    Field(gt=0, le=MAX_NUMBER, allow_inf_nan=False),
    _number_schema(0, MAX_NUMBER, exclusive_minimum=True),
]
Instrument = Annotated[
    str, Field(pattern=INSTRUMENT_PATTERN, description="An instrument code, e.g. SYN0001.")
]
# Keys are instrument codes: said with propertyNames (pydantic would allow any other key in the schema).
LimitPrices = Annotated[
    dict[Instrument, Price],
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": INSTRUMENT_PATTERN},
            "additionalProperties": {
                "anyOf": [
                    {"type": "number", "exclusiveMinimum": 0.0, "maximum": float(MAX_NUMBER)},
                    {"type": "string", "pattern": DECIMAL_PATTERN},
                ]
            },
        }
    ),
]


class WireModel(BaseModel):
    """camelCase on the wire, unknown fields refused (a typo is an error, never silently ignored)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


def _one_of_weight_or_quantity(schema: dict[str, Any]) -> None:
    # The rule the validator below enforces, in the schema's own words (absent and null are the same).
    given = {"type": ["number", "string"]}
    none = {"type": "null"}
    schema["anyOf"] = [
        {"required": ["weight"], "properties": {"weight": given, "quantity": none}},
        {"required": ["quantity"], "properties": {"quantity": given, "weight": none}},
    ]


class TargetIn(WireModel):
    """A target position in one instrument: exactly one of weight and quantity."""

    model_config = ConfigDict(json_schema_extra=_one_of_weight_or_quantity)

    instrument: Instrument
    weight: Weight | None = Field(None, description="A fraction of equity in [-1, 1] (negative: short).")
    quantity: Number | None = Field(
        None, description="Signed shares; rounded towards zero to whole lots of the venue."
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> TargetIn:
        if (self.weight is None) == (self.quantity is None):
            raise PydanticCustomError(
                "target_shape",
                "set exactly one of weight and quantity"
                if self.weight is not None
                else "a target needs a weight or a quantity",
            )
        return self


class SignalIn(WireModel):
    """Targets under one idempotency key (``POST /v1/signals``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "rebalance-2024-03-04",
                    "targets": [
                        {"instrument": "SYN0001", "weight": 0.05},
                        {"instrument": "SYN0002", "quantity": 300},
                    ],
                    "limitPrices": {"SYN0002": 12.5},
                }
            ]
        }
    )

    id: str = Field(
        pattern=SIGNAL_ID_PATTERN,
        description="The idempotency key: the same id with the same payload never makes a second order.",
    )
    targets: list[TargetIn] = Field(
        min_length=1,
        max_length=HARD_MAX_TARGETS,
        description="One target per instrument; at most spec.strategy.signalApi.maxTargets.",
    )
    limit_prices: LimitPrices | None = Field(
        None,
        description="Limit price per instrument (only instruments with a target); market orders otherwise.",
    )


class TradingStateIn(WireModel):
    """An operator's request to change the trading state (``POST /v1/trading-state``)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"state": "ACTIVE", "reason": "drawdown reviewed"}]}
    )

    state: TradingState = Field(description="ACTIVE, REDUCING (exposure-reducing orders only) or HALTED.")
    reason: str = Field(
        min_length=1,
        max_length=MAX_REASON,
        pattern=r"\S",
        description="Why (not blank); journaled and shown.",
    )


SIGNAL_IN: TypeAdapter[SignalIn] = TypeAdapter(SignalIn)
TRADING_STATE_IN: TypeAdapter[TradingStateIn] = TypeAdapter(TradingStateIn)


# --- answers (documented; the server builds them as dicts on the hot path) --------------------------


class ErrorBody(WireModel):
    """Every refusal: what is wrong, the JSON path of the field at fault ("$": the body), the fix."""

    error: str
    field: str = Field(description='JSON path of the field at fault, e.g. "targets[0].weight"; "$" the body.')
    fix: str


class OrderSummary(WireModel):
    """One order a signal made."""

    client_order_id: str
    instrument: str
    side: Literal["BUY", "SELL"]
    quantity: str = Field(description="A decimal number, as a string.")
    status: OrderStatus
    accepted: bool
    reason: str | None = Field(
        description="The rejection's reason code (e.g. ORDER_NOTIONAL); null if accepted."
    )
    detail: str | None


class SignalOut(WireModel):
    """A signal's answer: 202 when taken now, 200 with duplicate true for a retry of one taken before."""

    id: str
    duplicate: bool
    orders: list[OrderSummary]


class OrderRecord(WireModel):
    """An order of the session, as the journal knows it (decimals as strings)."""

    client_order_id: str
    broker_order_id: str | None
    instrument: str
    side: Literal["BUY", "SELL"]
    quantity: str
    limit_price: str | None
    status: OrderStatus
    filled_quantity: str
    average_price: str | None
    fees: str
    signal_id: str
    leg: str
    external: bool
    reason: str
    created: str = Field(description="ISO 8601 time.")
    updated: str | None


class OrdersOut(WireModel):
    orders: list[OrderRecord]


class PositionRecord(WireModel):
    """A non-zero position with its mark (decimals as strings)."""

    instrument: str
    quantity: str
    average_price: str
    mark: str | None
    market_value: str | None
    realized_pnl: str
    fees: str


class PositionsOut(WireModel):
    positions: list[PositionRecord]


class TradingStateOut(WireModel):
    requested: TradingState
    previous: TradingState
    state: TradingState
    cleared: dict[str, str] = Field(description="The latched conditions this request cleared.")
    conditions: dict[str, str] = Field(description="What still holds the session (name: STATE: detail).")


# --- the document ---------------------------------------------------------------------------------

_REF = "#/components/schemas/{model}"
_JOURNAL_HEADER = {
    "Kubequant-Journal": {
        "description": "durable: only events on disk; pending: writes kept arriving and some are still being written.",
        "schema": {"type": "string", "enum": ["durable", "pending"]},
    }
}


def _schemas(max_targets: int) -> dict[str, Any]:
    from pydantic.json_schema import models_json_schema

    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (SignalIn, "validation"),
        (TradingStateIn, "validation"),
        (ErrorBody, "serialization"),
        (SignalOut, "serialization"),
        (OrdersOut, "serialization"),
        (PositionsOut, "serialization"),
        (TradingStateOut, "serialization"),
        (LiveTradingSessionStatus, "serialization"),
    ]
    _, top = models_json_schema(models, by_alias=True, ref_template=_REF)
    schemas: dict[str, Any] = top["$defs"]
    schemas["SignalIn"]["properties"]["targets"]["maxItems"] = max_targets
    return dict(sorted(schemas.items()))


def _ref(name: str) -> dict[str, str]:
    return {"$ref": _REF.format(model=name)}


def _json(name: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref(name)}},
    }
    if headers:
        out["headers"] = headers
    return out


def _refusals(*statuses: int) -> dict[str, Any]:
    said = {
        400: "The body is not JSON, not an object, or nests deeper than 32 levels (refused before it is read).",
        401: "A missing or wrong bearer token (field headers.Authorization).",
        409: "Refused in the session's present state (for a signal: its id was taken with another payload).",
        413: "The body is larger than the API reads (refused before it is read).",
        422: "A field is refused; field names it and fix says what to send.",
        503: "Recovery has not finished (see /readyz).",
    }
    out = {str(s): _json("ErrorBody", said[s]) for s in statuses}
    out["429"] = _json(
        "ErrorBody",
        "This client (by address) sent more requests than spec.strategy.signalApi.rateLimit allows.",
        {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer", "minimum": 1}}},
    )
    return out


def _read(summary: str, name: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "operationId": "get" + name.removesuffix("Out"),
            "responses": {"200": _json(name, summary, _JOURNAL_HEADER), **_refusals(401)},
        }
    }


# A session's published document lists its venue's instruments (an enum on every instrument code) up to
# this many; past it the pattern alone says what an instrument code looks like.
MAX_LISTED_INSTRUMENTS = 5000


def with_instruments(document: dict[str, Any], instruments: Sequence[str] | None) -> dict[str, Any]:
    """``document`` with every instrument code of its schemas held to ``instruments`` (an enum), the ones a
    session's venue trades: what a client (or a fuzzer) draws from it is then an instrument the server
    takes. Unchanged without a list, or with more than MAX_LISTED_INSTRUMENTS."""
    if not instruments or len(instruments) > MAX_LISTED_INSTRUMENTS:
        return document
    names = sorted(set(instruments))

    def hold(node: Any) -> Any:
        if isinstance(node, dict):
            out = {k: hold(v) for k, v in node.items()}
            if out.get("pattern") == INSTRUMENT_PATTERN:  # a code, or the code keys of limitPrices
                out["enum"] = names
            return out
        if isinstance(node, list):
            return [hold(v) for v in node]
        return node

    held = hold(document)
    held["info"] = {
        **held["info"],
        "description": held["info"]["description"]
        + f" This session's venue trades the {len(names)} instruments its instrument codes enumerate.",
    }
    return held  # type: ignore[no-any-return]


def openapi_document(max_targets: int = DEFAULT_MAX_TARGETS) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the signal API whose signals carry at most ``max_targets`` targets."""
    signal_rules = (
        "One target per instrument, each an instrument the venue lists (within spec.universe when set); "
        "limitPrices only for instruments with a target; a weight needs the instrument's last price. "
        "These are 422 naming the field, as is an instrument the schema allows but the venue does not list."
    )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "kubequant signal API",
            "version": "v1",
            "description": "The trading pod's HTTP API: target signals in, orders out through the OMS, the "
            "session's orders, positions and status, and the trading state. Every operation needs "
            "`Authorization: Bearer <token>`; /healthz, /readyz, /metrics and this document do not, "
            "and are not operations of this API. Generated from the models the server validates with "
            "(kubequant.workloads.trading.node.signal_schema).",
        },
        "paths": {
            "/v1/signals": {
                "post": {
                    "summary": "Send target positions under an idempotency key.",
                    "description": signal_rules,
                    "operationId": "postSignal",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("SignalIn")}},
                    },
                    "responses": {
                        "202": _json(
                            "SignalOut", "Taken: the orders it made (accepted or rejected by risk)."
                        ),
                        "200": _json("SignalOut", "A retry of a signal taken before (duplicate true)."),
                        **_refusals(400, 401, 409, 413, 422, 503),
                    },
                }
            },
            "/v1/trading-state": {
                "post": {
                    "summary": "Set the trading state (a manual halt cancels open orders).",
                    "operationId": "postTradingState",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("TradingStateIn")}},
                    },
                    "responses": {
                        "200": _json("TradingStateOut", "The state after the request."),
                        **_refusals(400, 401, 409, 413, 422, 503),
                    },
                }
            },
            "/v1/orders": _read("Every order of the session, oldest first.", "OrdersOut"),
            "/v1/positions": _read("Non-zero positions with their marks.", "PositionsOut"),
            "/v1/status": _read(
                "The session's status (as in the LiveTradingSession).", "LiveTradingSessionStatus"
            ),
        },
        "components": {
            "schemas": _schemas(max_targets),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token in the Secret key spec.strategy.signalApi.tokenSecretRef.",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }


def render(document: dict[str, Any]) -> str:
    """The document as it is written to disk (stable: diffs stay readable)."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write docs/api/signal-api.json, or with --check exit 1 when it differs from the models."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=DOCUMENT)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = render(openapi_document())
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(
                f"drift: {args.out} differs from the signal API's models; run `{_COMMAND}`", file=sys.stderr
            )
            return 1
        print(f"{args.out} matches the signal API's models")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


_COMMAND = "python -m kubequant.workloads.trading.node.signal_schema"

if __name__ == "__main__":
    sys.exit(main())
