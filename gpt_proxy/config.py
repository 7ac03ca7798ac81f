"""Settings: one frozen dataclass, built from the environment (and `.env`) and validated once.

Every default lives here; every field has a line in `.env.example`. A bad value stops start-up
with a message naming the variable, never a half-configured service.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlparse, urlsplit, urlunsplit

from .prices import Price, PriceError, default_price, load_prices

ROOT = Path(__file__).resolve().parent.parent  # relative paths in settings start here
AZURE_API_VERSION = "2024-10-21"
UPSTREAM_KINDS = ("openai", "azure")


class ConfigError(ValueError):
    """A variable has a value the service cannot run with."""


@dataclass(frozen=True)
class UpstreamSpec:
    """One upstream: an OpenAI-compatible API, or an Azure OpenAI resource."""

    name: str
    base_url: str
    key: str = field(repr=False)
    kind: str = "openai"
    models: tuple[str, ...] = ()  # the models it serves; empty: any
    priority: int = 0  # lower first; equal priorities take turns
    api_version: str = AZURE_API_VERSION  # azure only
    deployments: Mapping[str, str] = field(default_factory=dict)  # azure: model -> deployment

    def serves(self, model: str) -> bool:
        return not self.models or model in self.models


@dataclass(frozen=True)
class Config:
    openai_api_key: str = field(default="", repr=False)
    openai_base_url: str = "https://api.openai.com/v1"
    openai_model: str = "gpt-4o-mini"
    openai_image_model: str = "dall-e-2"
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
    upstreams_file: str = ""
    failover_seconds: float = 30.0
    upstream_failures: int = 3
    upstream_cooldown: float = 30.0
    connect_retries: int = 2
    metrics_bind: str = "127.0.0.1:7346"
    conversation_store: str = field(default="sqlite:///data/conversations.db", repr=False)
    conversation_ttl_days: float = 30.0
    chat_process_role: str = "default"
    auth: str = "open"  # open | token | users; not set: token when PROXY_TOKEN is set
    database_url: str = field(default="sqlite:///data/gpt_proxy.db", repr=False)
    registration: str = "closed"
    session_days: float = 30.0
    login_limit: str = "5/minute"
    prices_file: str = ""
    default_price: Price | None = None  # DEFAULT_PRICE: input/output USD per million tokens
    budget_tz: str = "UTC"
    budget_max_tokens: int = 4096
    ledger_days: float = 400.0
    reply_store: str = field(default="memory://", repr=False)  # resumable replies' logs
    resume_grace_seconds: float = 30.0  # a left reply goes on this long for its client
    resume_keep_seconds: float = 300.0  # an ended reply's log is kept this long
    startup_wait_seconds: float = 60.0  # for the database and Redis at start
    upstreams: tuple[UpstreamSpec, ...] = ()  # read from UPSTREAMS_FILE
    prices: Mapping[str, Price] = field(default_factory=dict)  # read from PRICES_FILE

    def endpoints(self) -> tuple[UpstreamSpec, ...]:
        """The upstreams in the order they are tried: UPSTREAMS_FILE's, else the one of
        OPENAI_API_KEY / OPENAI_BASE_URL, else none (the demo)."""
        if self.upstreams:
            return self.upstreams
        if self.openai_api_key:
            return (UpstreamSpec("openai", self.openai_base_url, self.openai_api_key),)
        return ()

    @property
    def metrics_port(self) -> str:
        """The port of the metrics listener ("" when metrics are off)."""
        return self.metrics_bind.rpartition(":")[2]

    @property
    def demo(self) -> bool:
        """No upstream: answer from the built-in demo upstream, never the network."""
        return not self.endpoints()

    @property
    def upstream_mode(self) -> str:
        return "demo" if self.demo else "openai"

    def replace(self, **changes) -> Config:
        return dataclasses.replace(self, **changes)


def without_password(url: str) -> str:
    """A store's or database's URL fit for a message or a log line: never its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


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


def _bind(value: str) -> str:
    value = value.strip()
    if value and not re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):\d{1,5}", value):
        raise ValueError("must be host:port, such as 127.0.0.1:7346 (empty: no metrics)")
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


def _reply_store(value: str) -> str:
    value = value.strip() or "memory://"
    if value == "memory://":
        return value
    if re.match(r"rediss?://", value) and urlparse(value).hostname:
        return value
    raise ValueError("must be memory:// (this worker process only) or a redis://host:6379/0 "
                     "URL (every instance)")


def _choice(*choices: str):
    def parse(value: str) -> str:
        value = value.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value
    return parse


def _database_url(value: str) -> str:
    value = value.strip()
    if value.startswith("sqlite:///") and value[len("sqlite:///"):].strip("/"):
        return value
    if re.match(r"(postgresql|postgres|postgresql\+psycopg)://", value) and urlparse(value).hostname:
        return value
    raise ValueError("must be sqlite:///relative/path.db (relative to the project), "
                     "sqlite:////absolute/path.db or postgresql://user:password@host:5432/name")


def _default_price(value: str) -> Price | None:
    try:
        return default_price(value)
    except PriceError as exc:
        raise ValueError(str(exc)) from None


def _timezone(value: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    value = value.strip()
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("must be a time zone name such as UTC or Europe/Berlin") from None
    return value


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
    "openai_image_model": _text,
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
    "upstreams_file": _text,
    "failover_seconds": _float(0, 600),
    "upstream_failures": _int(1, 1000),
    "upstream_cooldown": _float(0, 86400),
    "connect_retries": _int(0, 10),
    "metrics_bind": _bind,
    "conversation_store": _conversation_store,
    "conversation_ttl_days": _float(0.001, 36500),
    "chat_process_role": _role_name,
    "auth": _choice("open", "token", "users"),
    "database_url": _database_url,
    "registration": _choice("closed", "open", "invite"),
    "session_days": _float(0.01, 3650),
    "login_limit": _rate_limit,
    "prices_file": _text,
    "default_price": _default_price,
    "budget_tz": _timezone,
    "budget_max_tokens": _int(1, 10_000_000),
    "ledger_days": _float(1, 36500),
    "reply_store": _reply_store,
    "resume_grace_seconds": _float(1, 3600),
    "resume_keep_seconds": _float(1, 86400),
    "startup_wait_seconds": _float(0, 3600),
}


def load_config(environ: Mapping[str, str] | None = None, **overrides) -> Config:
    """Build the settings from `environ` (default: the process environment) plus overrides."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    for name, parse in PARSERS.items():
        raw = environ.get(name.upper())
        if raw is None or (raw.strip() == "" and name not in ("openai_api_key", "metrics_bind")):
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name.upper()}={raw!r} is invalid: {exc}") from None
    values.update(overrides)
    config = Config(**values)
    if config.upstreams_file and "upstreams" not in overrides:
        config = config.replace(upstreams=load_upstreams(config.upstreams_file, environ))
    if config.prices_file and "prices" not in overrides:
        file = Path(config.prices_file)
        try:
            prices = load_prices(file if file.is_absolute() else ROOT / file)
        except PriceError as exc:
            raise ConfigError(f"PRICES_FILE={config.prices_file!r} {exc}") from None
        config = config.replace(prices=prices)
    if "auth" not in values and config.proxy_token:  # as before AUTH existed
        config = config.replace(auth="token")
    if config.auth == "token" and not config.proxy_token:
        raise ConfigError("AUTH=token needs PROXY_TOKEN (the token every client sends)")
    if config.openai_model == "":
        raise ConfigError("OPENAI_MODEL must not be empty")
    if config.allowed_models and config.openai_model not in config.allowed_models:
        raise ConfigError(
            f"OPENAI_MODEL={config.openai_model!r} is not in ALLOWED_MODELS")
    endpoints = config.endpoints()
    for model in (config.openai_model, *config.allowed_models):
        if endpoints and not any(spec.serves(model) for spec in endpoints):
            raise ConfigError(f"no upstream in UPSTREAMS_FILE serves model {model!r} "
                              "(OPENAI_MODEL or ALLOWED_MODELS names it)")
    return config


# --- the upstream list ----------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_UPSTREAM_KEYS = {"name", "kind", "base_url", "key_env", "models", "priority", "api_version",
                  "deployments"}


def load_upstreams(path: str, environ: Mapping[str, str]) -> tuple[UpstreamSpec, ...]:
    """Read UPSTREAMS_FILE: a TOML file of `[[upstream]]` tables, tried in order of
    `priority` (default: the order in the file). Each key is read from the environment
    variable its `key_env` names, so the file itself holds no secret."""
    file = Path(path) if Path(path).is_absolute() else ROOT / path
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"UPSTREAMS_FILE={path!r} cannot be read ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"UPSTREAMS_FILE={path!r} is not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"upstream"})
    if extra:
        raise ConfigError(f"UPSTREAMS_FILE={path!r}: unknown table or key {extra[0]!r} "
                          "(the file holds [[upstream]] tables)")
    entries = data.get("upstream")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"UPSTREAMS_FILE={path!r} holds no [[upstream]] table")
    specs = [_upstream(entry, i, path, environ) for i, entry in enumerate(entries)]
    names = [spec.name for spec in specs]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"UPSTREAMS_FILE={path!r}: the name {name!r} is used twice")
    return tuple(sorted(specs, key=lambda spec: spec.priority))  # stable: file order kept


def _upstream(entry: object, index: int, path: str, environ: Mapping[str, str]) -> UpstreamSpec:
    where = f"UPSTREAMS_FILE={path!r}: upstream #{index + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} is not a table")
    name = entry.get("name")
    if isinstance(name, str) and _NAME.fullmatch(name):
        where += f" ({name})"
    else:
        raise ConfigError(f"{where}: 'name' must be 1-64 letters, digits, '.', '_' or '-'")

    def fail(message: str) -> ConfigError:
        return ConfigError(f"{where}: {message}")

    extra = sorted(set(entry) - _UPSTREAM_KEYS)
    if extra:
        raise fail(f"unknown key {extra[0]!r} (known: {', '.join(sorted(_UPSTREAM_KEYS))})")
    kind = entry.get("kind", "openai")
    if kind not in UPSTREAM_KINDS:
        raise fail(f"'kind' must be one of {', '.join(UPSTREAM_KINDS)}")
    try:
        base_url = _url(entry.get("base_url", "") if isinstance(entry.get("base_url"), str) else "")
    except ValueError as exc:
        raise fail(f"'base_url' {exc}") from None
    key_env = entry.get("key_env")
    if not isinstance(key_env, str) or not _ENV_NAME.fullmatch(key_env):
        raise fail("'key_env' must name the environment variable that holds its key")
    key = environ.get(key_env, "").strip()
    if not key:
        raise fail(f"its key variable {key_env} is not set")
    try:
        key = _token(key)
    except ValueError as exc:
        raise fail(f"{key_env} {exc}") from None
    models = _strings(entry.get("models", []), "models", fail)
    priority = entry.get("priority", index)
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise fail("'priority' must be an integer")
    api_version = entry.get("api_version", AZURE_API_VERSION)
    deployments = entry.get("deployments", {})
    if kind != "azure" and ("api_version" in entry or "deployments" in entry):
        raise fail("'api_version' and 'deployments' are for kind = \"azure\" only")
    if not isinstance(api_version, str) or not re.fullmatch(r"[0-9A-Za-z.-]{1,40}", api_version):
        raise fail("'api_version' must look like 2024-10-21")
    if not isinstance(deployments, dict) or not all(
            isinstance(k, str) and k and isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v)
            for k, v in deployments.items()):
        raise fail("'deployments' must map model names to deployment names")
    if kind == "azure" and not models:
        models = tuple(deployments)
    return UpstreamSpec(name, base_url, key, kind, models, priority, api_version,
                        MappingProxyType(dict(deployments)))


def _strings(value: object, name: str, fail) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise fail(f"'{name}' must be a list of names")
    return tuple(v.strip() for v in value)
