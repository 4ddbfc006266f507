"""S3 keys from a credentials file, a mounted Secret's directory or the environment: read here
so the wire can sign without botocore. Failures name the file and a line, never its text."""

from __future__ import annotations

import configparser
import os

from ferry.mover.errors import ErrorKind, FerryError
from ferry.mover.redact import remember

_KEY_NAMES = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def read_credentials(path: str, profile: str | None) -> dict[str, str]:
    """Keys from an AWS credentials file, or from a directory of one-value files (a mounted
    Secret). Values are taken as written (no `%` interpolation) and every failure names the
    file and a line number, never its text: that text is the secret."""
    out: dict[str, str] = {}
    try:
        if os.path.isdir(path):
            for fname in os.listdir(path):
                key = fname.lower().replace("-", "_")
                key = key if key.startswith("aws_") else f"aws_{key}"
                if key in _KEY_NAMES:
                    with open(os.path.join(path, fname), encoding="utf-8") as f:
                        out[key] = f.read().strip()
        else:
            cp = configparser.ConfigParser(interpolation=None)
            with open(path, encoding="utf-8") as f:
                cp.read_file(f)
            section = profile or "default"
            if section not in cp:
                raise FerryError(
                    ErrorKind.AUTH_FAILED, f"credentials file {path} has no [{section}] section"
                )
            out = {k: v for k, v in cp[section].items() if k in _KEY_NAMES}
    except OSError as exc:
        raise FerryError(
            ErrorKind.AUTH_FAILED, f"cannot read credentials file {path} ({exc.strerror})"
        ) from None
    except UnicodeDecodeError:
        raise FerryError(
            ErrorKind.AUTH_FAILED, f"credentials file {path} is not UTF-8 text"
        ) from None
    except configparser.Error as exc:
        errors = getattr(exc, "errors", None)  # ParsingError: [(line number, line)]
        line = errors[0][0] if errors else getattr(exc, "lineno", None)
        at = f" at line {line}" if line else ""
        raise FerryError(
            ErrorKind.AUTH_FAILED, f"credentials file {path} is malformed{at}"
        ) from None
    remember(out.get("aws_secret_access_key"))
    remember(out.get("aws_session_token"))
    if "aws_access_key_id" not in out or "aws_secret_access_key" not in out:
        raise FerryError(
            ErrorKind.AUTH_FAILED, f"credentials file {path} lacks an access key id or secret"
        )
    return out


def env_keys() -> dict[str, str] | None:
    """Keys from the environment: the first place botocore's credential chain looks."""
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    remember(secret)
    remember(os.environ.get("AWS_SESSION_TOKEN"))
    if not (key and secret):
        return None
    keys = {"aws_access_key_id": key, "aws_secret_access_key": secret}
    if os.environ.get("AWS_SESSION_TOKEN"):
        keys["aws_session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return keys
