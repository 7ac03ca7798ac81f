"""Settings: one frozen dataclass, built from the environment (and `.env`) and validated once.

Every default lives here; every field has a line in `.env.example`. A bad value stops start-up
with a message naming the variable, never a half-configured service.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlparse

DEMO_BASE_URL = "demo:"


class ConfigError(ValueError):
    """A variable has a value the service cannot run with."""


@dataclass(frozen=True)
class Config:
    openai_api_key: str = field(default="", repr=False)
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    allowed_models: tuple[str, ...] = ()
    upstream_connect_timeout: float = 10.0
    upstream_read_timeout: float = 120.0
    heartbeat_seconds: float = 15.0
    max_stream_seconds: float = 900.0
    roles_dir: str = "roles"
    proxy_token: str = field(default="", repr=False)
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_body_bytes: int = 1_000_000
    max_history_chars: int = 100_000
    max_system_chars: int = 20_000
    max_messages: int = 200
    max_tokens_ceiling: int = 0
    rate_limit: str = ""
    rate_limit_storage: str = "memory://"
    trusted_proxies: int = 0
    log_content: bool = False
    max_event_bytes: int = 1_048_576
    conversation_store: str = field(default="sqlite:///data/conversations.db", repr=False)
    conversation_ttl_days: float = 30.0
    chat_process_role: str = "default"

    @property
    def demo(self) -> bool:
        """No key: answer from the built-in demo upstream, never the network."""
        return not self.openai_api_key

    @property
    def upstream_mode(self) -> str:
        return "demo" if self.demo else "openai"

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)


def _text(value: str) -> str:
    return value.strip()


def _float(lo: float, hi: float):
    def parse(value: str) -> float:
        number = float(value)
        if not lo <= number <= hi:
            raise ValueError(f"must be between {lo:g} and {hi:g}")
        return number
    return parse


def _int(lo: int, hi: int):
    def parse(value: str) -> int:
        number = int(value)
        if not lo <= number <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return number
    return parse


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise ValueError("must be 1/0, true/false, yes/no or on/off")


def _list(value: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _url(value: str) -> str:
    value = value.strip().rstrip("/")
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http(s) URL such as https://api.openai.com/v1")
    return value


def _token(value: str) -> str:
    value = value.strip()
    if value and not re.fullmatch(r"[\x21-\x7e]+", value):
        raise ValueError("must be printable ASCII with no spaces (it is sent as a Bearer token)")
    return value


def _origins(value: str) -> tuple[str, ...]:
    origins = _list(value)
    for origin in origins:
        if origin != "*" and not re.fullmatch(
                r"https?://[A-Za-z0-9.-]+(:\d{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:\d{1,5})?", origin):
            raise ValueError(f"{origin!r} is not an origin like https://chat.example.com "
                             "(scheme and host, optional port, no path), or *")
    return origins


def _hosts(value: str) -> tuple[str, ...]:
    hosts = _list(value)
    for host in hosts:
        if not re.fullmatch(r"\.?[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", host):
            raise ValueError(f"{host!r} is not a host name like chat.example.com "
                             "(no port; a leading dot allows every subdomain)")
    return hosts


def _rate_limit(value: str) -> str:
    value = value.strip()
    pattern = r"\d+\s*(/|per)\s*(\d+\s*)?(second|minute|hour|day)s?"
    for part in filter(None, (p.strip() for p in re.split(r"[;,]", value))):
        if not re.fullmatch(pattern, part, re.IGNORECASE):
            raise ValueError("must look like '60/minute' or '10 per second;1000/day'")
    return value


def _storage(value: str) -> str:
    value = value.strip() or "memory://"
    if not re.match(r"(memory|redis|rediss|redis\+sentinel|redis\+cluster)://", value):
        raise ValueError("must be memory:// or a redis:// URL")
    return value


def _conversation_store(value: str) -> str:
    value = value.strip()
    if value.startswith("sqlite:///") and value[len("sqlite:///"):].strip("/"):
        return value
    if re.match(r"rediss?://", value) and urlparse(value).hostname:
        return value
    raise ValueError("must be sqlite:///relative/path.db (relative to the project), "
                     "sqlite:////absolute/path.db or a redis://host:6379/0 URL")


def _role_name(value: str) -> str:
    value = value.strip()
    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,63}", value):
        raise ValueError("must be a role name like 'cli' (lowercase letters, digits, '-' and "
                         "'_', at most 64 characters)")
    return value


PARSERS = {
    "openai_api_key": _text,
    "openai_base_url": _url,
    "openai_model": _text,
    "allowed_models": _list,
    "upstream_connect_timeout": _float(0.1, 600),
    "upstream_read_timeout": _float(1, 3600),
    "heartbeat_seconds": _float(0.1, 300),
    "max_stream_seconds": _float(1, 86400),
    "roles_dir": _text,
    "proxy_token": _token,
    "cors_origins": _origins,
    "allowed_hosts": _hosts,
    "max_body_bytes": _int(1024, 100_000_000),
    "max_history_chars": _int(100, 10_000_000),
    "max_system_chars": _int(1, 10_000_000),
    "max_messages": _int(1, 10_000),
    "max_tokens_ceiling": _int(0, 10_000_000),
    "rate_limit": _rate_limit,
    "rate_limit_storage": _storage,
    "trusted_proxies": _int(0, 10),
    "log_content": _bool,
    "max_event_bytes": _int(1024, 100_000_000),
    "conversation_store": _conversation_store,
    "conversation_ttl_days": _float(0.001, 36500),
    "chat_process_role": _role_name,
}


def load_config(environ: Mapping[str, str] | None = None, **overrides) -> Config:
    """Build the settings from `environ` (default: the process environment) plus overrides."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    for name, parse in PARSERS.items():
        raw = environ.get(name.upper())
        if raw is None or (raw.strip() == "" and name != "openai_api_key"):
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name.upper()}={raw!r} is invalid: {exc}") from None
    values.update(overrides)
    config = Config(**values)
    if config.openai_model == "":
        raise ConfigError("OPENAI_MODEL must not be empty")
    if config.allowed_models and config.openai_model not in config.allowed_models:
        raise ConfigError(
            f"OPENAI_MODEL={config.openai_model!r} is not in ALLOWED_MODELS")
    return config
