"""The gateway protocol (version 1): paths, error codes, and the instrument and status vocabularies.

Shared by the gateway program (``server.py``, next to the Windows desktop client) and the adapter
in the trading pod (``broker.py``); ``docs/brokers/gateway.md`` describes it for people.
"""

from __future__ import annotations

from enum import StrEnum

PROTOCOL_VERSION = 1
PREFIX = "/v1"


class ErrorCode(StrEnum):
    """The ``error.code`` of a gateway's JSON error; the adapter maps each onto a Broker error."""

    BAD_REQUEST = "BAD_REQUEST"  # malformed request: BrokerRejected
    UNAUTHORIZED = (
        "UNAUTHORIZED"  # no or a wrong token / client certificate: BrokerRejected (ConfigError at connect)
    )
    REJECTED = "REJECTED"  # the client or the brokerage refused the order: BrokerRejected
    DUPLICATE_ORDER = "DUPLICATE_ORDER"  # the client order id is taken by a different order: DuplicateOrder
    NOT_FOUND = "NOT_FOUND"  # no such order: None from get_order, BrokerRejected from cancel
    UNAVAILABLE = (
        "UNAVAILABLE"  # the desktop client cannot be reached; nothing was placed: BrokerDisconnected
    )
    UNKNOWN_OUTCOME = "UNKNOWN_OUTCOME"  # a submit may or may not have been placed: BrokerTimeout


HTTP_STATUS = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.REJECTED: 422,
    ErrorCode.DUPLICATE_ORDER: 409,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.UNKNOWN_OUTCOME: 504,
}

# Order statuses on the wire: the OMS's vocabulary (OrderStatus values) in lower case.
WIRE_STATUSES = (
    "accepted",
    "partially_filled",
    "filled",
    "pending_cancel",
    "canceled",
    "rejected",
    "expired",
)


def exchange_of(code: str) -> str:
    """SH, SZ or BJ for a six-digit A-share code (the prefixes of the exchanges' code ranges)."""
    if code[:1] in ("5", "6", "9"):
        return "SH"
    if code[:1] in ("4", "8") or code[:2] == "92":
        return "BJ"
    return "SZ"


def to_instrument(code: str) -> str:
    """The session's instrument (qlib's ``SH600000``) for a client's code (``600000`` or ``600000.SH``)."""
    code = code.strip().upper()
    if "." in code:
        digits, market = code.split(".", 1)
        return f"{market}{digits}"
    if code[:2] in ("SH", "SZ", "BJ"):
        return code
    digits = code.zfill(6)
    return f"{exchange_of(digits)}{digits}"


def to_security(instrument: str) -> str:
    """The client's six-digit code for an instrument (``SH600000`` → ``600000``)."""
    text = instrument.strip().upper()
    digits = text[2:] if text[:2] in ("SH", "SZ", "BJ") else text.split(".", 1)[0]
    if len(digits) != 6 or not digits.isdigit():
        raise ValueError(f"{instrument!r} is not an A-share code (SH600000, SZ000001 or 600000)")
    return digits
