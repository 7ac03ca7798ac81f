"""The official OpenAI SDK for JavaScript (`openai` on npm, pinned in tests/js/package.json) in
Debian's Chromium, on a page of another origin, as the chat UIs that call the API from the
browser use it (`dangerouslyAllowBrowser`): its CORS preflight asks for the SDK's own headers
(X-Stainless-*), and everything after it is what those users get: the streamed text, typed
errors, an abort that stops the upstream, and a refusal for an origin not listed.

The page comes from a small static server on `localhost` (another site than the service on
127.0.0.1, so Chromium applies every cross-origin rule) that serves the SDK's own ES modules
from tests/js/node_modules; `npm ci --prefix tests/js` (run by `make test`) installs them.
"""

from __future__ import annotations

import functools
import http.server
import threading
from pathlib import Path

import pytest

from .browser_helpers import WAIT_MS, missing
from .conftest import TEST_KEY, free_port, serve
from .fake_upstream import Scenario, chunk_json, sse_bytes, stream_scenario
from .test_integration import TEXT, TOKENS

pytestmark = pytest.mark.browser

SDK = Path(__file__).resolve().parent / "js" / "node_modules" / "openai"
TOKEN = "proxy-token-for-the-browser-0123456789"
PAGE = b"""<!doctype html><meta charset="utf-8"><title>a chat UI elsewhere</title>
<script type="module">
import OpenAI from "/openai/index.mjs";
window.OpenAI = OpenAI;
document.documentElement.dataset.ready = "true";
</script>"""


class _PageHandler(http.server.SimpleHTTPRequestHandler):
    """`/`: the page; `/openai/...`: the SDK's files. ES modules need a JavaScript MIME type."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".js": "text/javascript"}

    def do_GET(self):  # noqa: N802 - the stdlib's name
        if self.path in ("/", "/index.html"):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)
            return
        if not self.path.startswith("/openai/"):
            self.send_error(404)
            return
        self.path = self.path[len("/openai"):]
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def page_origin():
    if not (SDK / "index.mjs").is_file():
        missing("the JavaScript SDK is not installed (npm ci --prefix tests/js)")
    port = free_port()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(_PageHandler, directory=str(SDK)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture(scope="module")
def cors_server(fake_upstream, page_origin, tmp_path_factory):
    """The service with a proxy token and the page's origin (on `localhost`) listed."""
    with serve(fake_upstream, tmp_path_factory.mktemp("gunicorn-cors"),
               PROXY_TOKEN=TOKEN, CORS_ORIGINS=f"http://localhost:{page_origin}") as server:
        yield server


@pytest.fixture()
def page(chromium, page_origin, cors_server, upstream):
    def open_(host: str = "localhost"):
        context = chromium.new_context()
        contexts.append(context)
        page = context.new_page()
        page.goto(f"http://{host}:{page_origin}/")
        page.wait_for_selector("html[data-ready='true']")
        return page

    contexts: list = []
    yield open_
    for context in contexts:
        context.close()


def run(page, body: str, service: str, **args):
    """Run `body` in the page with `client` (the SDK aimed at the service's /v1 with the
    proxy token) and `args` in scope; what it returns comes back."""
    return page.evaluate(
        "async ({ base, token, args }) => {"
        " const OpenAI = window.OpenAI;"
        " const client = new OpenAI({ baseURL: base, apiKey: token, dangerouslyAllowBrowser: true,"
        " maxRetries: 0, timeout: 20000 });"
        f" {body} }}",
        {"base": f"{service}/v1", "token": args.pop("token", TOKEN), "args": args})


STREAM_TEXT = """
    const stream = await client.chat.completions.create(
        { model: args.model, messages: [{ role: "user", content: "hi" }], stream: true });
    let text = "";
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content || "";
    return text;"""


def test_a_page_of_a_listed_origin_streams_the_exact_text_through_the_sdk(
        page, cors_server, upstream):
    upstream.push(stream_scenario(TOKENS, size=1))  # cut inside every multi-byte character
    assert run(page(), STREAM_TEXT, cors_server.url, model="fake-model") == TEXT
    record = upstream.records[0]
    # The upstream sees the service's key; the page's token and the SDK's headers stop here.
    assert record.headers["authorization"] == f"Bearer {TEST_KEY}"
    assert TOKEN not in str(record.headers) and not any(name.startswith("x-stainless") for name in record.headers)


def test_models_and_a_whole_reply_with_a_role_as_the_model(page, cors_server, upstream):
    upstream.push(stream_scenario(["SELECT 1;"]))
    result = run(page(), """
        const models = [];
        for await (const model of client.models.list()) models.push(model.id);
        const reply = await client.chat.completions.create(
            { model: "role:sql", messages: [{ role: "user", content: "one" }] });
        return { models, text: reply.choices[0].message.content };""", cors_server.url)
    assert {"fake-model", "role:sql", "role:cli"} <= set(result["models"])
    assert result["text"] == "SELECT 1;"
    sent = upstream.records[0].json
    assert sent["model"] == "fake-model" and sent["messages"][0]["role"] == "system"


ERRORS = """
    const out = {};
    for (const [name, call] of Object.entries({
        token: () => new OpenAI({ baseURL: client.baseURL, apiKey: "wrong",
                                  dangerouslyAllowBrowser: true, maxRetries: 0 })
            .chat.completions.create({ model: "fake-model", messages: [{ role: "user", content: "x" }] }),
        model: () => client.chat.completions.create(
            { model: "role:nobody", messages: [{ role: "user", content: "x" }] }),
        body: () => client.chat.completions.create({ model: "fake-model", messages: [] }),
    })) {
        try { await call(); out[name] = "no error"; }
        catch (e) {
            out[name] = [e.constructor.name, e.status, e instanceof OpenAI.APIError,
                         e.error && e.error.type];
        }
    }
    return out;"""


def test_errors_reach_the_page_as_the_sdks_typed_errors(page, cors_server, upstream):
    assert run(page(), ERRORS, cors_server.url) == {
        "token": ["AuthenticationError", 401, True, "authentication_error"],
        "model": ["NotFoundError", 404, True, "invalid_request_error"],
        "body": ["BadRequestError", 400, True, "invalid_request_error"]}
    assert upstream.records == []


def test_a_failure_mid_stream_is_an_api_error_after_the_text(page, cors_server, upstream):
    upstream.push(Scenario(parts=[sse_bytes(chunk_json("你好")), 0.05, b"data: {broken\n\n"]))
    result = run(page(), """
        let text = "";
        try {
            const stream = await client.chat.completions.create(
                { model: "fake-model", messages: [{ role: "user", content: "hi" }], stream: true });
            for await (const chunk of stream) text += chunk.choices[0]?.delta?.content || "";
            return { text, error: null };
        } catch (e) {
            return { text, error: [e instanceof OpenAI.APIError, e.message] };
        }""", cors_server.url)
    assert result["text"] == "你好"
    assert result["error"][0] is True and "malformed" in result["error"][1]


def test_aborting_the_stream_in_the_page_closes_the_upstream_within_a_second(
        page, cors_server, upstream):
    upstream.push(Scenario(parts=[sse_bytes(chunk_json("one"))], hold_open=True))
    chat_ui = page()
    first = run(chat_ui, """
        const stream = await client.chat.completions.create(
            { model: "fake-model", messages: [{ role: "user", content: "hi" }], stream: true });
        window.stream = stream;  // read by hand: leaving a for-await loop would abort it
        const { value } = await stream[Symbol.asyncIterator]().next();
        return value.choices[0].delta.content;""", cors_server.url)
    assert first == "one"
    record = upstream.wait_for_request()
    assert not record.disconnected.is_set()  # nothing aborted it yet
    chat_ui.evaluate("window.stream.controller.abort()")
    # The upstream never ends by itself: only the abort closes it (the 1 s promise is timed
    # without a browser, in test_openai_sdk.py).
    assert record.disconnected.wait(WAIT_MS / 1000), "the upstream was never closed"


def test_a_page_of_an_origin_not_listed_cannot_spend_the_key(page, cors_server, upstream):
    # 127.0.0.1 on the page's port: another origin than the listed localhost one.
    result = run(page("127.0.0.1"), """
        try {
            await client.chat.completions.create(
                { model: "fake-model", messages: [{ role: "user", content: "hi" }] });
            return "answered";
        } catch (e) { return e.constructor.name; }""", cors_server.url)
    assert result == "APIConnectionError"  # the browser refused to hand over the answer
    assert upstream.records == []  # and the service refused it before the upstream
