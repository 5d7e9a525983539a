"""Masking what looks like a credential in text that leaves a pod (status messages, Events).

A workload's error can quote a connection string, a header or an environment value; the Backtest's
status and Events are readable by anyone with ``view`` on the namespace. :func:`redact` replaces
the secret part of anything that looks like a credential by ``[REDACTED]`` and bounds the length.
It errs on the side of masking: a 40-character hex id is masked too.
"""

from __future__ import annotations

import re

MASK = "[REDACTED]"
MAX_MESSAGE = 1024

# Words that make a key's value a secret: password=..., api_key: ..., "client_secret": "...".
_SECRET_KEY = (
    r"[\w.-]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|"
    r"credentials?|authorization|session[_-]?id|cookie|signature|key[_-]?id)[\w.-]*"
)

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # PEM private keys (a GCP service account's JSON key carries one).
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|$)", re.S
        ),
        MASK,
    ),
    # user:password@ in a URL (postgres://, https://, redis://, ...).
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/:@]+:[^\s/@]*@"), rf"\1{MASK}@"),
    # Bearer and basic credentials (an Authorization header's value).
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}"), rf"\1\2{MASK}"),
    # key=value, key: value, "key": "value" where the key names a secret.
    (
        re.compile(rf"""(?i)(["']?\b{_SECRET_KEY}["']?\s*(?:=|:)\s*)("[^"]*"|'[^']*'|[^\s,;&)}}\]]+)"""),
        rf"\1{MASK}",
    ),
    # Cloud and service key shapes.
    (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"), MASK),  # AWS key id
    (re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"), MASK),  # Google API key
    (re.compile(r"\bya29\.[0-9A-Za-z_-]{20,}"), MASK),  # Google OAuth access token
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}\b"), MASK),  # GitHub token
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), MASK),  # Slack token
    (re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), MASK),  # JWT
    # Long hex blobs (keys, digests of secrets).
    (re.compile(r"(?i)(?<![\w/.-])[0-9a-f]{32,}(?![\w/.-])"), MASK),
)

# Long base64 blobs (an AWS secret key, an encoded token): 32+ characters of the base64 alphabets,
# mixing upper case, lower case and digits, not starting a path.
_BASE64 = re.compile(r"(?<![\w/+.-])[A-Za-z0-9+/_-]{32,}={0,2}(?![\w/+=.-])")


def _mask_blob(match: re.Match[str]) -> str:
    blob = match.group(0)
    mixed = (
        re.search(r"[A-Z]", blob) is not None
        and re.search(r"[a-z]", blob) is not None
        and re.search(r"[0-9]", blob) is not None
    )
    return MASK if mixed and not blob.startswith("/") else blob


def redact(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` with anything that looks like a credential masked, on one line, at most ``limit`` characters."""
    out = text
    for pattern, replacement in _PATTERNS:
        out = pattern.sub(replacement, out)
    out = _BASE64.sub(_mask_blob, out)
    out = " ".join(out.split())
    if len(out) > limit:
        out = out[: limit - 1].rstrip() + "…"
    return out
