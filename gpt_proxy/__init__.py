"""gpt_proxy: a streaming chat proxy in front of any OpenAI-compatible API."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException, NotFound

from .config import Config, load_config
from .errors import DatabaseUnavailable, ProxyError
from .security import install as install_security
from .security import loggable

HTTP_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
              405: "method_not_allowed", 413: "payload_too_large", 429: "rate_limited"}

__version__ = "1.0.0"
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class State:
    """What the routes share: settings, the upstream client, the role registry, and the client
    protocols (modules with a blueprint `bp`, `owns(path)` and `error_response(err)`; the
    first that owns a path shapes its errors)."""

    config: Config
    upstream: object
    roles: object
    protocols: tuple = ()
    started: float = 0.0  # time.time() at start-up
    metrics: object = None
    accounts: object = None  # the user service (accounts.Accounts) over `db`
    budgets: object = None  # budgets and the usage ledger (budgets.Budgets) over `db`
    replies: object = None  # the logs of resumable replies (replies.open_reply_store)

    def respond(self, err: ProxyError):
        """The error response in the shape of the protocol the request came in by (what is
        left of the request body is read first, so the client can read the answer). The
        access line keeps the error's own status, also when a protocol answers it with
        another."""
        from .pipeline import drain_body

        drain_body(request.environ)
        g.error_code, g.error_status = err.code, err.status
        for protocol in self.protocols:
            if protocol.owns(request.path):
                return protocol.error_response(err)
        raise RuntimeError("no protocol owns this path")  # `api` owns every path


def create_app(config: Config | dict | None = None, *, upstream=None) -> Flask:
    """The app factory. `config`: a Config, a dict of overrides, or None for the environment."""
    from . import account_api, api, chat_process, console_api, identity, openai_api, user_protocol
    from .accounts import Accounts
    from .budgets import Budgets
    from .db import DatabaseError, open_database
    from .metrics import Metrics, NoMetrics
    from .pipeline import ACCESS_LOGGED
    from .replies import loggable_path, open_reply_store
    from .roles import RoleRegistry
    from .validation import IdConverter, refuse_unknown_ids

    if not isinstance(config, Config):
        config = load_config(**(config or {}))
    named = [spec_model for spec in config.endpoints() for spec_model in spec.models]
    metrics = (Metrics(models=config.allowed_models or (config.openai_model,
                                                        config.openai_image_model, *named))
               if config.metrics_bind else NoMetrics())
    if upstream is None:
        if config.demo:
            from .demo import DemoUpstream
            upstream = DemoUpstream()
        else:
            from .failover import Upstreams
            upstream = Upstreams(config, metrics=metrics)
    roles_dir = Path(config.roles_dir)
    if not roles_dir.is_absolute():
        roles_dir = ROOT / roles_dir
    registry = RoleRegistry(roles_dir)  # logs each file it cannot load, by file and line

    database = open_database(config.database_url, ROOT)  # DatabaseError names DATABASE_URL
    accounts = Accounts(database, session_days=config.session_days)
    budgets = Budgets(database, prices=config.prices, default_price=config.default_price,
                      tz=config.budget_tz, ledger_days=config.ledger_days, metrics=metrics,
                      hold_seconds=config.max_stream_seconds + 2 * config.upstream_read_timeout
                      + config.failover_seconds + 60)
    metrics.read_reservations(budgets.reservations)

    app = Flask(__name__, static_folder=str(ROOT / "static"), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    app.url_map.converters["id"] = IdConverter  # `<id:...>`: before any route is added
    protocols = (openai_api, chat_process, user_protocol, api)  # `api` last: every path left
    state = State(config=config, upstream=upstream, roles=registry, protocols=protocols,
                  started=time.time(), metrics=metrics, accounts=accounts, budgets=budgets,
                  replies=open_reply_store(config, metrics))
    app.extensions["gpt_proxy"] = state
    for protocol in protocols:
        app.register_blueprint(protocol.bp)
    app.register_blueprint(account_api.bp)  # JSON routes in the `api` door's error shape
    app.register_blueprint(console_api.bp)  # the console's JSON (same shape)
    from .openapi import bp as openapi_bp
    app.register_blueprint(openapi_bp)  # GET /api/openapi.json: this API, described
    from .cli import register as register_cli
    register_cli(app)

    @app.get("/")
    def index():
        return app.send_static_file("index.html")

    @app.get("/console")
    def console():  # the console's page: its data comes from the JSON routes it calls
        return app.send_static_file("console.html")

    @app.before_request
    def start_request():
        g.started = time.monotonic()
        g.request_id = api.new_request_id()
        # The metrics listener serves /metrics and nothing else; the others never serve it.
        on_metrics_port = (config.metrics_bind != ""
                           and request.environ.get("SERVER_PORT") == config.metrics_port)
        if on_metrics_port != (request.path == "/metrics"):
            raise NotFound()

    @app.get("/metrics")
    def prometheus_metrics():
        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    @app.after_request
    def finish_request(response):
        response.headers["X-Request-Id"] = g.get("request_id", "-")
        hold = g.get("budget_hold")
        if hold is not None and hold.remaining:
            response.headers["X-Budget-Remaining"] = hold.header()
        if request.path in ("/", "/console") or request.path.startswith("/static/"):
            # Unversioned names: the page and its modules are revalidated (ETag -> 304) on
            # every load; the vendored libraries change only with a release.
            vendor = request.path.startswith("/static/vendor/")
            response.headers["Cache-Control"] = "public, max-age=86400" if vendor else "no-cache"
        if not (g.get("streaming") or request.environ.get(ACCESS_LOGGED)):
            chat = g.get("chat") or {}
            if request.path != "/metrics":
                metrics.answered(request.url_rule.rule if request.url_rule else "unmatched",
                                 chat.get("protocol", "-"), chat.get("framing", "-"),
                                 g.get("error_code") or (
                                     "ok" if response.status_code < 400 else
                                     HTTP_CODES.get(response.status_code, "error")))
            logging.getLogger("gpt_proxy.access").info(
                "request id=%s client=%s method=%s path=%s status=%d protocol=%s role=%s "
                "model=%s upstream=%s tried=%s duration=%.0fms", g.get("request_id", "-"),
                request.remote_addr, loggable(request.method, 20),
                loggable(loggable_path(request.path)),
                g.get("error_status", response.status_code), chat.get("protocol", "-"),
                loggable(chat.get("role", "-")), loggable(chat.get("model", "-")),
                chat.get("upstream", "-"), chat.get("tried", 0),
                (time.monotonic() - g.get("started", time.monotonic())) * 1000)
        return response

    install_security(app, config)  # after start_request: its checks need the request id
    identity.install(app, config, accounts, protocols)  # after the rate limit: guesses count
    app.before_request(refuse_unknown_ids)  # after the caller is known: 401 before 404

    @app.errorhandler(ProxyError)
    def proxy_error(err: ProxyError):
        return state.respond(err)

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        if err.code is not None and err.code < 400:  # a redirect is not an error
            return err
        status = err.code or 500
        code = HTTP_CODES.get(status) or (err.name or "error").lower().replace(" ", "_")
        headers = {name: value for name, value in err.get_headers()
                   if name.lower() in ("allow", "retry-after", "www-authenticate")}
        return state.respond(ProxyError(err.description or err.name, status=status,
                                        code=code.replace("'", ""), headers=headers))

    @app.errorhandler(DatabaseError)
    def database_failed(err: DatabaseError):
        # A blip (a restart, a dropped connection): a 503 the client may retry, never a 500.
        # The connection that failed was dropped from the pool; the next request gets another.
        logging.getLogger("gpt_proxy").warning("request id=%s: %s", g.get("request_id", "-"),
                                               err)
        return state.respond(DatabaseUnavailable())

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        # The request id ties the reply to the traceback among every request's lines.
        request_id = g.get("request_id", "-")
        logging.getLogger("gpt_proxy").exception("unexpected error in request id=%s",
                                                 request_id)
        return state.respond(ProxyError(f"internal error (request {request_id}); see the "
                                        "server log"))

    return app
