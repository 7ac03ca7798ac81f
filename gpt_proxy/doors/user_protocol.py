"""The GPT Terminal user protocol: the routes the seed project's own backend (July 2023) served
to its frontend under /api (`user/*`, `role/*`, `gpt/getImage`), in its shape.

Every answer is HTTP 200 with an envelope: `{"code": 0, "data": ...}` on success,
`{"code": <code>, "message": "<text>", "data": null}` on failure, the codes being 40000 (bad
parameters), 40100 (not signed in), 40300 (forbidden), 40400 (not found), 50000 (anything
else). That frontend treats any other HTTP status as a broken server and stays stuck until it
is reloaded, so even an unexpected failure is a 200 envelope (the access line keeps the real
status). Its error box reads `msg` where the envelope says `message`, so both carry the text.
"""

from __future__ import annotations

import logging

from flask import Blueprint, current_app, jsonify, request

from ..base.errors import (
    BadRequest,
    ClientLeft,
    Conflict,
    NotFound,
    ProxyError,
    Unauthorized,
    UpstreamError,
    with_wait,
)
from ..identity.accounts import (
    MAX_ROLE_DESCRIPTION,
    MAX_ROLE_NAME,
    MAX_USERNAME,
    check_keyword,
    check_password,
    check_text,
    role_elements,
    username_key,
)
from ..identity.callers import (
    Caller,
    LoginThrottle,
    caller,
    clear_session_cookie,
    public,
    same_origin_only,
    set_session_cookie,
)
from ..pipeline import stages as pipeline
from ..pipeline.relay import Outcome, client_watcher
from ..pipeline.roles import DEFAULT_ROLE
from ..pipeline.validation import check_text as check_chars
from ..pipeline.validation import parse_body
from ..upstream.images import MAX_PROMPT_CHARS, page_urls
from ..upstream.operations import IMAGES

bp = Blueprint("user_protocol", __name__, url_prefix="/api")
log = logging.getLogger("gpt_proxy.accounts")
CREDENTIALS = ("session", "key")  # what identifies a caller here (see identity)

PREFIXES = ("/api/user/", "/api/role/")
PATHS = frozenset(("/api/gpt/getImage",))

BAD_PARAMETERS, NOT_SIGNED_IN, FORBIDDEN, NOT_FOUND, OTHER = 40000, 40100, 40300, 40400, 50000


def owns(path: str) -> bool:
    return path.startswith(PREFIXES) or path in PATHS


def ok(data: object = None):
    """Success: `{"code": 0, "data": ...}`."""
    return jsonify({"code": 0, "data": data})


def code_of(err: ProxyError) -> int:
    """The envelope code for an error, by its HTTP status."""
    status = err.status
    if status == 401:
        return NOT_SIGNED_IN
    if status == 403:
        return FORBIDDEN
    if status == 404:
        return NOT_FOUND
    if 400 <= status < 500:
        return BAD_PARAMETERS
    return OTHER


def error_response(err: ProxyError):
    """HTTP 200 and the failure envelope; a wait (rate limit) is said in the message."""
    message = with_wait(err)
    retry = err.headers.get("Retry-After")
    response = jsonify({"code": code_of(err), "message": message, "msg": message, "data": None})
    if retry:
        response.headers["Retry-After"] = retry
    return response


# --- reading a request ----------------------------------------------------------------------

def _body() -> dict:
    """The JSON object sent; an empty body is an empty object (the page sends none to
    `user/current`, `user/logout` and `role/listByUserId`)."""
    state = current_app.extensions["gpt_proxy"]
    raw = pipeline.read_body(state.config)
    return parse_body(raw) if raw.strip() else {}


def _state():
    return current_app.extensions["gpt_proxy"]


def _accounts_on() -> None:
    if _state().config.auth != "users":
        raise ProxyError(f"accounts are off on this server (AUTH={_state().config.auth}); "
                         "the operator turns them on with AUTH=users", status=403,
                         code="accounts_off")


def _signed_in() -> Caller:
    found = caller()
    if found.user is None:
        raise Unauthorized("not signed in: user login -u <name> -p <password>",
                           code="not_signed_in")
    return found


def _throttle() -> LoginThrottle:
    extensions = current_app.extensions
    throttle = extensions.get("gpt_proxy.login_throttle")
    if throttle is None:
        throttle = extensions["gpt_proxy.login_throttle"] = LoginThrottle(
            _state().config, _state().accounts)
    return throttle


# --- user/* ---------------------------------------------------------------------------------

@bp.post("/user/register")
@public
@same_origin_only
def register():
    _accounts_on()
    state = _state()
    mode = state.config.registration
    body = _body()
    if mode == "closed":
        raise ProxyError("registration is closed here: an admin creates accounts", status=403,
                         code="registration_closed")
    invite = body.get("invite")
    if mode == "invite" and (not isinstance(invite, str) or not invite.strip()):
        raise BadRequest("registration here needs an invite code ('invite')", field="invite",
                         code="invite_required")
    _throttle().attempt(request.remote_addr or "-", what="registration")
    user = state.accounts.create_user(body.get("username"), body.get("password"),
                                      body.get("email"),
                                      invite=invite.strip() if mode == "invite" else None)
    log.info("user registered id=%d", user.id)
    return ok(user.id)


@bp.post("/user/login")
@public
@same_origin_only
def login():
    _accounts_on()
    state = _state()
    body = _body()
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not username.strip():
        raise BadRequest("'username' is required", field="username")
    if not isinstance(password, str) or not password:
        raise BadRequest("'password' is required", field="password")
    if len(username) > 4 * MAX_USERNAME:
        raise BadRequest("no such username (too long)", field="username")
    key = username_key(username.strip())
    counted = _throttle().attempt(request.remote_addr or "-", key)
    user = state.accounts.authenticate(username, password)
    if user is None:
        raise NotFound("wrong username or password", code="wrong_credentials")
    _throttle().succeeded(counted)
    old = caller()
    if old.session_hash is not None:  # signing in again: the old session ends
        state.accounts.end_session(old.session_hash)
    token = state.accounts.new_session(user)
    response = ok(user.public())
    set_session_cookie(response, token, state.config)
    return response


@bp.post("/user/current")
@public
def current():
    _body()
    found = caller()
    if found.user is None:
        raise Unauthorized("not signed in", code="not_signed_in")
    return ok(found.user.public())


@bp.post("/user/logout")
@public
def logout():
    _body()
    found = caller()
    if found.session_hash is None:
        raise Unauthorized("not signed in", code="not_signed_in")
    _state().accounts.end_session(found.session_hash)
    response = ok(True)
    clear_session_cookie(response)
    return response


@bp.post("/user/password")
def change_password():
    """Change one's own password (the old one is asked again); every other session ends."""
    signed = _signed_in()
    body = _body()
    state = _state()
    old, new = body.get("password"), body.get("newPassword")
    if not isinstance(old, str) or not old:
        raise BadRequest("'password' (the current one) is required", field="password")
    counted = _throttle().attempt(request.remote_addr or "-",
                                  username_key(signed.user.username))
    if state.accounts.authenticate(signed.user.username, old) is None:
        raise BadRequest("the current password is wrong", field="password",
                         code="wrong_credentials")
    _throttle().succeeded(counted)
    check_password(new, "newPassword")
    state.accounts.set_password(signed.user.id, new, keep_session=signed.session_hash)
    return ok(True)


# --- role/* ---------------------------------------------------------------------------------

def _keyword(body: dict) -> str:
    keyword = body.get("keyword")
    if not isinstance(keyword, str) or not keyword.strip():
        raise BadRequest("'keyword' is required", field="keyword")
    return keyword


def _role_fields(body: dict, *, required: bool) -> dict:
    config = _state().config
    fields: dict = {}
    if required or body.get("name") is not None:
        fields["name"] = check_text(body.get("name"), "name", MAX_ROLE_NAME)
    if required or body.get("description") is not None:
        fields["description"] = check_text(body.get("description"), "description",
                                           MAX_ROLE_DESCRIPTION, required=False)
    if required or body.get("roleElementList") is not None:
        fields["elements"] = role_elements(body.get("roleElementList"), "roleElementList",
                                           config.max_system_chars)
    return fields


@bp.post("/role/create")
def role_create():
    signed = _signed_in()
    body = _body()
    keyword = check_keyword(_keyword(body))
    server = {role["name"] for role in _state().roles.list()}
    if username_key(keyword) in server or keyword.casefold() == DEFAULT_ROLE:
        raise Conflict(f"{keyword!r} is one of the server's roles: pick another keyword",
                       field="keyword")
    fields = _role_fields(body, required=True)
    role = _state().accounts.create_role(signed.user.id, keyword, fields["name"],
                                         fields["description"], fields["elements"])
    return ok(role.id)


@bp.post("/role/listByUserId")
def role_list():
    signed = _signed_in()
    _body()
    return ok([role.public() for role in _state().accounts.roles(signed.user.id)])


@bp.post("/role/getRoleElementsByKeyword")
def role_elements_of():
    signed = _signed_in()
    keyword = _keyword(_body())
    role = _state().accounts.role(signed.user.id, keyword)
    if role is None:
        raise NotFound(f"you have no role called {keyword[:100]!r}", code="unknown_role",
                       field="keyword")
    return ok(role.messages())


@bp.post("/role/update")
def role_update():
    """Change an own role's name, description or messages (the page's `gpt diy --edit`)."""
    signed = _signed_in()
    body = _body()
    role = _state().accounts.update_role(signed.user.id, _keyword(body),
                                         **_role_fields(body, required=False))
    return ok(role.public())


@bp.post("/role/delete")
def role_delete():
    signed = _signed_in()
    _state().accounts.delete_role(signed.user.id, _keyword(_body()))
    return ok(True)


# --- POST /api/gpt/getImage: GPT image generation -------------------------------------------
# `{prompt, number, size}` as the July-2023 frontend sends it (`number` 0 when the user gave
# none: its option parser's empty string, through `Number()`; `size` absent): `prompt`
# required; `number` 1-5 (an integer, or its digits as a string; 0 or null: the default 1, as
# that frontend's own backend read them); `size` 256x256, 512x512 or 1024x1024 (default
# 256x256); nothing else. The
# upstream (OPENAI_IMAGE_MODEL) is asked through the shared pipeline for base64 images, and
# the answer is `[{"url": "data:image/...;base64,..."}, ...]`: images the page shows under
# its strict CSP, from any worker, with nothing kept here (`images`: a URL-only upstream's
# images are fetched into data: URLs; any other URL is refused).

IMAGE_FIELDS = ("prompt", "number", "size")
IMAGE_SIZES = ("256x256", "512x512", "1024x1024")
MAX_IMAGES = 5


def image_request(body: dict) -> tuple[str, int, str]:
    """(prompt, number, size) of a getImage body, or a BadRequest (code 40000) naming the
    field."""
    for key in body:
        if key not in IMAGE_FIELDS:
            raise BadRequest(f"'{str(key)[:100]}' is not a supported field (supported: "
                             f"{', '.join(IMAGE_FIELDS)})", field=str(key)[:100])
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("'prompt' is required: describe the image", field="prompt")
    check_chars(prompt, "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"'prompt' is {len(prompt)} characters long; at most "
                         f"{MAX_PROMPT_CHARS} are accepted", field="prompt")
    number = body.get("number")
    if number is None or number == 0 and not isinstance(number, bool):  # none given
        number = 1
    elif (isinstance(number, str) and number.strip().isascii() and number.strip().isdigit()
          and len(number) < 4):
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_IMAGES:
        raise BadRequest(f"'number' must be an integer from 1 to {MAX_IMAGES}", field="number")
    size = body.get("size")
    if size is None:
        size = IMAGE_SIZES[0]
    elif size not in IMAGE_SIZES:
        raise BadRequest(f"'size' must be one of {', '.join(IMAGE_SIZES)}", field="size")
    return prompt, number, size


@bp.post("/gpt/getImage")
def get_image():
    state = current_app.extensions["gpt_proxy"]
    config = state.config
    prompt, number, size = image_request(parse_body(pipeline.read_body(config)))
    model = config.openai_image_model
    if config.allowed_models and model not in config.allowed_models or not state.upstream.serves(
            model):
        raise BadRequest(f"images are not served here: the image model {model!r} "
                         "(OPENAI_IMAGE_MODEL) is not allowed (ALLOWED_MODELS) or no upstream "
                         "serves it", code="model_not_allowed")
    options: dict = {"prompt": prompt, "n": number, "size": size}
    if not model.startswith("gpt-image"):  # those always answer base64, and take no format
        options["response_format"] = "b64_json"
    turn = pipeline.Turn("user", "application/json", [], model, options=options, stream=False,
                         last_from_user=False, log_text=prompt, operation=IMAGES)
    gone = client_watcher(request.environ)
    urls: list[str] = []

    def shown(outcome: Outcome) -> None:
        """The answer's images as data: URLs, before the access line is written (a refused
        or failed image is this request's outcome)."""
        if outcome.error is not None or outcome.client_left:
            return
        answer = next((d.chunk for d in outcome.chunks if d.kind == "completion"), None)
        try:
            if answer is None:
                raise UpstreamError("the upstream answered with an event stream, not images")
            urls.extend(page_urls(answer, config, gone))
        except ProxyError as err:
            outcome.error = err
            if isinstance(err, ClientLeft):
                outcome.client_left = True

    outcome = pipeline.start(turn, on_close=shown).collect(raw=True)
    if outcome.error is not None:
        raise outcome.error
    if outcome.client_left:
        raise ClientLeft("the client left before the images were made")
    return ok([{"url": url} for url in urls])
