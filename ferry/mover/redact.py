"""The one filter every message passes before it leaves the process.

Ferry's own messages are built from endpoint names, file names and line
numbers, never from a credential. But a message may also quote a library or
a server (an SSH server sees a password and may echo it back), so every
FerryError, every log record of the CLI and every span event goes through
`redact`: it masks the password of any `scheme://user:password@` URL and every
secret this process has loaded (`remember`), plain or percent-encoded.
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import quote, quote_plus

MASK = "***"
MIN_SECRET = 4  # shorter values would mask ordinary words; URL and parser rules still apply

# scheme://user:password@ ; the password runs to the last '@' of the token (it may hold
# '/', '?', '#' or '@'). A port followed by a path (host:22/dir@x) is not a password.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:@/?#[]*):(?!\d+/)\S*@")

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()


def remember(value: str | None) -> None:
    """Mask `value` in every message from now on: call it where a credential is read."""
    global _secrets
    if not value or len(value) < MIN_SECRET:
        return
    forms = {value, quote(value, safe=""), quote(value), quote_plus(value)}
    with _lock:
        # longest first, so a secret that contains another is masked whole
        _secrets = tuple(sorted(set(_secrets) | forms, key=len, reverse=True))


def redact(text: str) -> str:
    """`text` without URL passwords and without any remembered secret."""
    text = _URL_PASSWORD.sub(rf"\g<head>:{MASK}@", text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFormatter(logging.Formatter):
    """A log formatter whose whole output (tracebacks included) passes `redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
