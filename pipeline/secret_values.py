"""Secrets in settings: read from a value or a file (container secrets), never shown.

A secret setting is a pydantic ``SecretStr`` (shown as ``**********``) or a ``*_file`` path to read
at start-up; URLs may carry a password in their user info. :func:`display_settings` is what
``cxp config`` and the worker's start-up log show: every secret masked.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import SecretStr

MASK = "***"


class ConfigurationError(RuntimeError):
    """Settings that cannot work together, or a secret file that cannot be read (``cxp`` prints it)."""


def read_secret_file(path: Path, setting: str) -> str:
    """The file's text without surrounding whitespace; a clear error naming the setting if unreadable."""
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {setting} {path}: {exc.strerror}") from None
    if not text:
        raise ConfigurationError(f"{setting} {path} is empty")
    return text


def secret(value: Optional[SecretStr], path: Optional[Path], setting: str) -> Optional[str]:
    """The file's secret if ``path`` is set (``setting`` names it in errors), else the inline value."""
    if path is not None:
        return read_secret_file(path, setting)
    return value.get_secret_value() if value is not None else None


def token_lines(text: str) -> list[str]:
    """Tokens of a tokens file or a comma-separated value: one per line or comma, # starts a comment."""
    tokens = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        tokens.extend(part.strip() for part in line.split(",") if part.strip())
    return tokens


def mask_url(url: str) -> str:
    """The URL with the password of its user info, and any password query item, replaced:
    clickhouse://u:***@host:9000/cx."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=f"{parts.username}:{MASK}@{parts.netloc.rsplit('@', 1)[1]}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any("password" in key.lower() for key, _ in query):
        parts = parts._replace(query=urlencode([(k, MASK if "password" in k.lower() else v) for k, v in query]))
    return urlunsplit(parts)


def display_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        return MASK if value.get_secret_value() else ""
    if isinstance(value, str) and "://" in value:
        return ",".join(mask_url(part) for part in value.split(","))
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{key}={item}" for key, item in value.items())
    return str(value)


def display_settings(settings: Any) -> dict[str, str]:
    """Every setting by its CXP_ variable, as text safe to print or log."""
    return {variable: display_value(value) for variable, (value, _) in settings.flat().items()}


def clickhouse_security(clickhouse: Any) -> dict[str, Any]:
    """NativeBackend's password / secure / ca_certs arguments from the clickhouse_* settings."""
    options: dict[str, Any] = {"secure": clickhouse.secure}
    if clickhouse.password_file is not None:
        options["password"] = read_secret_file(clickhouse.password_file, "clickhouse_password_file")
    if clickhouse.ca_file is not None:
        options["ca_certs"] = str(clickhouse.ca_file)
    return options
