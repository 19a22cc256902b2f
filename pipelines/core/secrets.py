"""Credentials inside URIs: found, and hidden in anything written or printed."""

from __future__ import annotations

import re

# `scheme://user:secret@host`: a secret inside a URI
_URI_SECRET = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@'\"]+:)([^@/\s'\"]+)@")

CREDENTIALS_HINT = (
    "give the URI without them and put them in MLFLOW_TRACKING_USERNAME and "
    "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
)


def redact(text: object) -> str:
    """Hide passwords in URIs (`scheme://user:secret@host` -> `scheme://user:***@host`)."""
    return _URI_SECRET.sub(r"\1***@", str(text))


def has_secret(text: object) -> bool:
    """True when `text` holds a password inside a URI."""
    return bool(_URI_SECRET.search(str(text)))
