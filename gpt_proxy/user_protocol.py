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

from flask import Blueprint, jsonify

from .errors import ProxyError

bp = Blueprint("user_protocol", __name__, url_prefix="/api")

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
    message = err.message
    retry = err.headers.get("Retry-After")
    if retry and "retry in" not in message:
        message = f"{message} (retry in {retry} s)"
    response = jsonify({"code": code_of(err), "message": message, "msg": message, "data": None})
    if retry:
        response.headers["Retry-After"] = retry
    return response


# --- POST /api/gpt/getImage: GPT image generation -------------------------------------------
# `{prompt, number, size}` as the July-2023 frontend sends it (`number` null when the user gave
# none, `size` absent): `prompt` required; `number` 1-5 (default 1; an integer, or its digits
# as a string); `size` 256x256, 512x512 or 1024x1024 (default 256x256); nothing else. The
# upstream (OPENAI_IMAGE_MODEL) is asked through the shared pipeline for base64 images, and
# the answer is `[{"url": "data:image/...;base64,..."}, ...]`: images the page shows under
# its strict CSP, from any worker, with nothing kept here (`images`: a URL-only upstream's
# images are fetched into data: URLs; any other URL is refused).

from flask import current_app, request  # noqa: E402 - this block is self-contained

from . import pipeline  # noqa: E402
from .errors import BadRequest, ClientLeft, UpstreamError  # noqa: E402
from .images import MAX_PROMPT_CHARS, page_urls  # noqa: E402
from .operations import IMAGES  # noqa: E402
from .relay import Outcome, client_watcher  # noqa: E402
from .validation import check_text, parse_body  # noqa: E402

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
    check_text(prompt, "prompt")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise BadRequest(f"'prompt' is {len(prompt)} characters long; at most "
                         f"{MAX_PROMPT_CHARS} are accepted", field="prompt")
    number = body.get("number")
    if number is None:
        number = 1
    elif isinstance(number, str) and number.strip().isdigit() and len(number) < 4:
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
