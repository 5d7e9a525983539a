"""Credentials in a workload's error never reach a status message or an Event: crafted messages."""

from __future__ import annotations

import pytest

from kubequant.redaction import MASK, MAX_MESSAGE, redact

pytestmark = pytest.mark.unit

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


@pytest.mark.parametrize(
    ("message", "secrets"),
    [
        (
            "OperationalError: connect to postgres://trader:hunter2@db.internal:5432/prices",
            ["hunter2", "trader"],
        ),
        ("GET https://alice:p%40ss@data.example.com/bars failed", ["p%40ss", "alice"]),
        (f"HTTP 401: Authorization: Bearer {JWT}", [JWT, JWT[:20]]),
        ("request headers {'Authorization': 'Basic dXNlcjpwYXNzd29yZA=='}", ["dXNlcjpwYXNzd29yZA=="]),
        (
            f"botocore: AWS_SECRET_ACCESS_KEY={AWS_SECRET} AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
            [AWS_SECRET, "AKIAIOSFODNN7EXAMPLE"],
        ),
        (
            f"bare key AKIAIOSFODNN7EXAMPLE and secret {AWS_SECRET} in a repr",
            ["AKIAIOSFODNN7EXAMPLE", AWS_SECRET],
        ),
        ('settings {"password": "s3cr3t!", "user": "bob", "api_key": \'abc123\'}', ["s3cr3t!", "abc123"]),
        (
            "env APCA_API_SECRET_KEY=Zx9yW8vU7tS6rQ5pO4nM3lK2jI1hG0fE and APCA_API_KEY_ID: PKTEST1234",
            ["Zx9yW8vU7tS6rQ5pO4nM3lK2jI1hG0fE", "PKTEST1234"],
        ),
        ("client_secret=abc&token=xyz789&user=bob", ["abc", "xyz789"]),
        (
            "google: AIzaSyA-1234567890abcdefghijklmnopqrstu; oauth ya29.a0AfH6SMBxabcdefghijklmnopqrstuvwxyz",
            ["AIzaSyA-1234567890abcdefghijklmnopqrstu", "ya29.a0AfH6SMBx"],
        ),
        (
            'service account {"private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\\n-----END PRIVATE KEY-----\\n"}',
            ["MIIEvQIBADANBgkqhkiG9w0BAQEFAASC"],
        ),
        ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7bq\nabc", ["MIIEowIBAAKCAQEA7bq"]),
        (
            "tokens ghp_abcdefghijklmnopqrstuvwxyz0123456789 xoxb-1234567890-abcdefghij",
            ["ghp_abcdefghijklmnopqrstuvwxyz0123456789", "xoxb-1234567890"],
        ),
        (
            "hmac 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 rejected",
            ["9f86d081884c7d659a2feaa0c55ad015"],
        ),
        (
            "blob dGhpcyBpcyBhIHNlY3JldCB0b2tlbiB2YWx1ZTEyMw== leaked",
            ["dGhpcyBpcyBhIHNlY3JldCB0b2tlbiB2YWx1ZTEyMw"],
        ),
    ],
)
def test_credentials_are_masked(message: str, secrets: list[str]) -> None:
    out = redact(message)
    for secret in secrets:
        assert secret not in out, out
    assert MASK in out


@pytest.mark.parametrize(
    "message",
    [
        "spec.period.end: 2022-12-30 is past the last usable day of the data — fix: end on or before 2022-12-29",
        "DataError: /var/lib/kubequant/data/features/sh600000/close.day.bin: no such file",
        "ConfigError: spec.strategy.class: module kubequant.workloads.backtest.strategies has no class Foo",
        "ValueError: invalid token provided for account PA1234",
        "KeyError: 'instrument SH600000' in https://data.example.com/bars?start=2022-01-04",
        "MemoryError: the model needs 12.5 GiB; the pod's limit is 8Gi — fix: raise spec.pod.resources.limits.memory",
    ],
)
def test_ordinary_errors_pass_unchanged(message: str) -> None:
    assert redact(message) == message


def test_one_bounded_line() -> None:
    out = redact("Traceback (most recent call last):\n  File x\nValueError: " + "x " * 5000)
    assert "\n" not in out and len(out) == MAX_MESSAGE and out.endswith("…")
    assert redact("short", limit=3) == "sh…"
