"""Keeping credentials out of everything a run records: params, tags, run names, messages."""

import os
import re
from urllib.parse import urlsplit, urlunsplit


def redact_uri(uri: str | None) -> str | None:
    """Drop any user:password from a URI so it never reaches params, tags or files."""
    if not uri or "@" not in uri:
        return uri
    parts = urlsplit(uri)
    if not parts.password and not parts.username:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


_SECRET_NAME = re.compile(r"TOKEN|PASSWORD|SECRET|API_KEY|ACCESS_KEY", re.IGNORECASE)


def scrub(value: str) -> str:
    """A param or tag value with URI credentials and the values of secret-looking environment variables removed."""
    value = " ".join(redact_uri(part) or part for part in value.split(" "))
    for name, secret in os.environ.items():
        if _SECRET_NAME.search(name) and len(secret) >= 6 and secret in value:
            value = value.replace(secret, "***")
    return value
