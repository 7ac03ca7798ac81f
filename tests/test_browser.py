"""The web terminal in a real browser: Debian's headless Chromium driven by Playwright, against
the real app under gunicorn and the fake upstream. The page carries its own CSP (a meta tag:
no inline script or style, no eval), so every test here also runs under that policy.

Waiting is always Playwright's (`wait_for_*`, `expect`) or a threading Event, never a sleep.
"""

from __future__ import annotations

import json

import pytest

from .browser_helpers import WAIT_MS, expect, paced_stream
from .fake_upstream import json_scenario, stream_scenario

pytestmark = pytest.mark.browser
pytest_plugins = ["tests.browser_fixtures"]  # the chromium, open_terminal and term fixtures

TOKENS = ["Hello", " there,", " this", " reply", " grows", " in", " steps."]
COMMANDS = ["gpt chat", "gpt image", "gpt role", "gpt diy", "gpt model", "gpt history", "gpt reset", "clear",
            "history", "help"]


def test_page_loads_under_its_csp_with_no_console_errors(term, live):
    page = term.page
    expect()(page).to_have_title("GPT Terminal")
    expect()(term.input).to_be_focused()
    expect()(term.output).to_contain_text("help")
    expect()(page.locator("#banner")).to_be_hidden()  # the fake upstream is not the demo
    csp = page.locator("meta[http-equiv='Content-Security-Policy']").get_attribute("content")
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
    assert term.console_errors == []
    # Every asset came from this server (the vendored libraries included).
    assert all(url.startswith(live.url) for url in term.requests), term.requests


@pytest.mark.parametrize("width", [1000, 360])
def test_demo_mode_shows_a_one_line_banner(open_terminal, width):
    def demo_health(page):
        page.route("**/healthz", lambda route: route.fulfill(
            status=200, content_type="application/json",
            body=json.dumps({"status": "ok", "upstream": "demo", "demo": True, "model": "demo"})))

    term = open_terminal(width=width, setup=demo_health)
    banner = term.page.locator("#banner")
    expect()(banner).to_be_visible()
    expect()(banner).to_contain_text("Demo mode")
    lines = banner.evaluate("""(banner) => {
        const range = document.createRange();
        range.selectNodeContents(banner);
        return new Set([...range.getClientRects()].map((box) => Math.round(box.top))).size;
    }""")  # the text's line boxes, counted by where each starts
    assert lines == 1
    assert banner.get_attribute("title") == banner.text_content()  # cut short: all in the title


def test_reply_grows_in_steps_then_equals_the_upstream_text(term, upstream):
    upstream.push(paced_stream(TOKENS, pause=0.2, first_delay=1.3))
    page = term.page
    # Record every distinct text the reply shows while it streams.
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => {
            const answer = document.querySelector('#output .reply:last-of-type .answer');
            const text = answer ? answer.textContent.trim() : '';
            if (text && window.__seen[window.__seen.length - 1] !== text) window.__seen.push(text);
        }).observe(document.getElementById('output'),
                   {childList: true, subtree: true, characterData: true});
    }""")
    term.type_command("gpt chat -r ikun hi")
    # Until the first token (here after a heartbeat ping) a waiting indicator shows.
    expect()(term.last(".reply .waiting")).to_be_visible()
    expect()(term.last(".reply .waiting")).to_have_count(0, timeout=WAIT_MS)
    term.wait_idle()
    final = "".join(TOKENS)
    expect()(term.last(".reply .answer")).to_have_text(final)
    seen = page.evaluate("() => window.__seen")
    partial = [text for text in seen if text != final]
    assert len(partial) >= 2, seen
    assert all(final.startswith(text) for text in seen), seen
    assert [len(t) for t in seen] == sorted(len(t) for t in seen), "the reply never shrinks"
    assert upstream.records[0].json["messages"][-1] == {"role": "user", "content": "hi"}
    expect()(term.last(".reply .reply-meta")).to_contain_text("ikun")
    assert term.console_errors == []


def test_ctrl_c_aborts_the_reply_and_the_upstream_sees_the_disconnect(term, upstream):
    upstream.push(paced_stream(["first", " words"], pause=0.1, hold_open=True))
    term.type_command("gpt chat -r ikun tell me a long story")
    expect()(term.last(".reply .answer")).to_have_text("first words")
    term.input.press("Control+c")
    record = upstream.wait_for_request(1)
    assert record.disconnected.wait(WAIT_MS / 1000), "the server kept its upstream open"
    expect()(term.last(".reply .note")).to_contain_text("stopped")
    term.wait_idle()
    expect()(term.page.locator("#stop")).to_be_hidden()
    assert term.console_errors == []


def test_stop_button_stops_a_reply_for_touch_users(term, upstream):
    upstream.push(paced_stream(["waiting"], hold_open=True))
    term.type_command("gpt chat hi")
    expect()(term.last(".reply .answer")).to_have_text("waiting")
    term.page.locator("#stop").click()
    assert upstream.wait_for_request(1).disconnected.wait(WAIT_MS / 1000)
    expect()(term.last(".reply .note")).to_contain_text("stopped")


def test_untrusted_html_in_a_reply_runs_nothing(term, upstream):
    hostile = ['Look: <img src=x onerror="window.__xss=\'img\'">', " <script>window.__xss='script'",
               "</script>", " [click](javascript:window.__xss='link')",
               ' <a href="javascript:window.__xss=1" onclick="window.__xss=2">a</a>',
               ' <iframe src="/"></iframe><svg onload="window.__xss=3"></svg>',
               " ![pixel](x) ![remote](http://tracker.invalid/p.png) done"]
    upstream.push(stream_scenario(hostile))
    term.chat("gpt chat hi")
    answer = term.last(".reply .answer")
    expect()(answer).to_contain_text("done")
    assert term.page.evaluate("() => window.__xss") is None
    for selector in ("script", "img", "iframe", "svg", "[onerror]", "[onclick]", "[onload]",
                     "a[href^='javascript']"):
        assert answer.locator(selector).count() == 0, selector
    # Raw HTML is shown as the text it is; markdown images become placeholders, not fetches.
    expect()(answer).to_contain_text('<img src=x onerror="window.__xss=\'img\'">')
    expect()(answer).to_contain_text("<script>window.__xss='script'</script>")
    expect()(answer.locator(".image-placeholder")).to_have_text(["[image: pixel]",
                                                                 "[image: remote]"])
    assert answer.locator("a.image-placeholder").get_attribute("href").startswith("http://tracker")
    assert not any(url.endswith("/x") or "tracker" in url for url in term.requests), term.requests
    assert term.console_errors == []  # nothing was even left for the CSP to block


def test_up_and_down_walk_the_command_history_which_survives_a_reload(term):
    term.type_command("help")
    term.type_command("gpt role")
    expect()(term.output.locator(".role-list")).to_be_visible()
    term.input.fill("draft")
    term.input.press("ArrowUp")
    expect()(term.input).to_have_value("gpt role")
    term.input.press("ArrowUp")
    expect()(term.input).to_have_value("help")
    term.input.press("ArrowDown")
    term.input.press("ArrowDown")
    expect()(term.input).to_have_value("draft")
    term.page.reload()
    term.page.wait_for_selector("html[data-ready='true']")
    term.input.press("ArrowUp")
    expect()(term.input).to_have_value("gpt role")


def test_a_follow_up_sends_the_earlier_turns_and_reset_forgets_them(term, upstream):
    upstream.push(stream_scenario(["Two", " and", " a", " half", " years!"]),
                  stream_scenario(["Yes."]), stream_scenario(["Fresh."]))
    assert term.chat("gpt chat -r ikun 'how long did you practise?'") == "Two and a half years!"
    assert term.chat('gpt chat -r ikun "really that long?"') == "Yes."
    sent = upstream.wait_for_request(2).json["messages"]
    assert sent[-3:] == [{"role": "user", "content": "how long did you practise?"},
                         {"role": "assistant", "content": "Two and a half years!"},
                         {"role": "user", "content": "really that long?"}]
    assert sent[0]["role"] == "system"  # the role template still opens the conversation
    term.type_command("gpt history -r ikun")
    expect()(term.output.locator(".turn")).to_have_count(4)
    term.type_command("gpt reset -r ikun")
    expect()(term.last(".ok")).to_contain_text("forgot the 4 messages")
    term.chat("gpt chat -r ikun new topic")
    contents = [m["content"] for m in upstream.wait_for_request(3).json["messages"]]
    assert "how long did you practise?" not in contents and contents[-1] == "new topic"


def test_a_message_is_sent_as_typed_and_one_quoted_string_loses_its_quotes(term, upstream):
    upstream.push(stream_scenario(["ok"]), stream_scenario(["ok"]), stream_scenario(["ok"]))
    term.chat("gpt chat what's up?")
    term.input.fill("gpt chat -t 0.5 first line")
    term.input.press("Shift+Enter")  # a new line, not a submission
    term.page.keyboard.type('  "indented" second')
    term.input.press("Enter")
    term.wait_idle()
    term.chat("""gpt chat -m other-model 'a "quoted" question'""")
    sent = [upstream.wait_for_request(n).json for n in (1, 2, 3)]
    assert sent[0]["messages"][-1]["content"] == "what's up?"
    assert sent[1]["messages"][-1]["content"] == 'first line\n  "indented" second'
    assert sent[1]["temperature"] == 0.5
    assert sent[2]["messages"][-1]["content"] == 'a "quoted" question'
    assert sent[2]["model"] == "other-model"


def test_help_lists_every_command_with_its_options(term):
    term.type_command("help")
    listed = term.output.locator(".help-list dt").all_inner_texts()
    for name in COMMANDS:
        assert any(usage == name or usage.startswith(name + " ") for usage in listed), name
    term.type_command("help gpt chat")
    expect()(term.output).to_contain_text("-t, --temperature")
    for flag in ("-r", "-t", "-m"):
        assert any(t.startswith(flag) for t in term.output.locator(".help-list dt").all_inner_texts())


def test_help_gpt_diy_explains_making_using_and_managing_own_roles(term):
    term.type_command("help gpt diy")
    expect()(term.last(".heading")).to_contain_text("gpt diy -k <keyword> -n <name> -d <description>")
    about = term.last(".heading + .line")
    for words in ("definition", "Ctrl+C", "kept in this browser", "gpt chat -r <keyword>"):
        expect()(about).to_contain_text(words)
    flags = term.last(".help-list").locator("dt").all_inner_texts()
    for flag in ("-k, --keyword", "-n, --name", "-d, --description", "--list", "--show",
                 "--export", "--delete"):
        assert any(t.startswith(flag) for t in flags), (flag, flags)
    expect()(term.output).to_contain_text('e.g. gpt diy -k poet -n "Haiku poet"')


@pytest.mark.parametrize("line, message, hint", [
    ("foo bar", "unknown command: foo", "gpt chat foo bar"),
    ("chat hi", "unknown command: chat", "gpt chat hi"),
    ("gtp role", "unknown command: gtp", "did you mean: gpt role?"),
    ("gpt", "gpt needs a subcommand", "gpt chat hello"),
    ("gpt chat -x hi", "unknown option -x", "help gpt chat"),
    ("gpt chat -t hot hi", "-t needs a number from 0 to 2", "gpt chat -t 0.7"),
    ("gpt chat -t 3 hi", "-t needs a number from 0 to 2", "gpt chat -t 0.7"),
    ("gpt chat -r", "needs a role name", "-r ikun"),
    ("gpt chat", "needs a message", "gpt chat -r ikun hi"),
    ('gpt role "ikun', "quote is not closed", "gpt role"),
    ('gpt chat -m "my model hi', "quote is not closed", "gpt role"),
    ("gpt role nobody", 'there is no role "nobody"', "ikun"),
    ("help nothing", 'no command "nothing"', "help"),
    ("gpt diy", "gpt diy needs -k, -n and -d", "gpt diy -k poet"),
    ("gpt diy -k poet -n Poet", "gpt diy needs a description", "-d"),
    ("gpt diy -k Poet! -n Poet -d Haiku", '"Poet!" cannot be a keyword', "-k poet-"),
    ("gpt diy -k poet -n Haiku poet -d Haiku", 'unexpected "poet -d Haiku"', "quote a name"),
    ("gpt diy -k poet -n Poet -d '   '", "the description is empty", "gpt diy -k poet"),
    ("gpt diy --list --show poet", "one thing at a time", "gpt diy --list"),
    ("gpt diy --show", "option --show needs a keyword", "gpt diy --show poet"),
    ("gpt diy --export nobody", 'you have no role "nobody"', "make one"),
    ("gpt diy -x", "unknown option -x", "help gpt diy"),
])
def test_mistakes_get_a_one_line_explanation_and_a_hint(term, upstream, line, message, hint):
    term.type_command(line)
    error = term.last(".error")
    expect()(error.locator(".error-line")).to_contain_text(message)
    expect()(error.locator(".hint-line")).to_contain_text(hint)
    assert upstream.records == []  # nothing was sent for a command that was not understood


def test_tab_completes_commands_options_and_role_names(term):
    expect()(term.input).to_be_focused()
    term.page.keyboard.type("gpt ch")
    term.page.keyboard.press("Tab")
    expect()(term.input).to_have_value("gpt chat ")
    term.page.keyboard.type("--te")
    term.page.keyboard.press("Tab")
    expect()(term.input).to_have_value("gpt chat --temperature ")
    term.input.fill("gpt chat -r ik")
    term.input.press("Tab")
    expect()(term.input).to_have_value("gpt chat -r ikun ")
    term.input.fill("gpt role ")
    term.input.press("Tab")  # several roles: they are listed
    expect()(term.last(".choices")).to_contain_text("ikun")
    term.input.fill("he")
    term.input.press("Tab")
    expect()(term.input).to_have_value("help ")


def test_http_errors_and_error_events_are_shown_in_plain_words(term, upstream):
    term.type_command("gpt chat -r nosuchrole hi")
    expect()(term.last(".error .error-line")).to_contain_text("HTTP 404")
    expect()(term.last(".error .hint-line")).to_contain_text("gpt role")

    upstream.push(json_scenario(401, {"error": {"message": "bad key", "type": "auth"}}))
    term.type_command("gpt chat hi")
    expect()(term.last(".error .error-line")).to_contain_text("HTTP 502")
    term.wait_idle()

    # The stream starts, then the upstream stops without finishing: an `error` event.
    upstream.push(paced_stream(["half a"], complete=False))
    term.type_command("gpt chat hi again")
    expect()(term.last(".error .error-line")).to_contain_text("the reply failed")
    expect()(term.last(".reply .answer")).to_have_text("half a")
    assert term.errors_except("404", "502") == []


def test_reasoning_is_shown_dimmed_and_apart_from_the_answer(term, upstream):
    upstream.push(paced_stream(["The answer."], reasoning=["Let me think", " it over."],
                               pause=0.05))
    assert term.chat("gpt chat why?") == "The answer."
    reasoning = term.last(".reply .reasoning")
    expect()(reasoning).to_contain_text("Let me think it over.")
    assert term.last(".reply .answer").locator(".reasoning").count() == 0
    colors = term.page.evaluate("""() => [
        getComputedStyle(document.querySelector('#output .reasoning')).color,
        getComputedStyle(document.querySelector('#output .answer')).color]""")
    assert colors[0] != colors[1]


def test_the_original_frontends_reading_loop_gets_exactly_the_reply_text(term, upstream):
    upstream.push(paced_stream(["你好", ", world", " — ok"], pause=0.15))
    result = term.page.evaluate("""async () => {
        const response = await fetch('/api/gpt/get', {
            method: 'POST',
            headers: {'Content-Type': 'application/json'},
            body: JSON.stringify({message: [{role: 'user', content: 'hi'}], role: 'ikun',
                                  temperature: 0.7}),
        });
        const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
        let text = '', reads = 0;
        while (true) {
            const {value, done} = await reader.read();
            if (done) break;
            text += value;
            reads += 1;
        }
        return {text, reads, type: response.headers.get('Content-Type')};
    }""")
    assert result["text"] == "你好, world — ok"
    assert result["reads"] >= 2
    assert result["type"].startswith("text/plain")


def test_ctrl_l_clears_and_a_click_anywhere_focuses_the_input(term):
    term.type_command("help")
    term.input.press("Control+l")
    expect()(term.page.locator("#output > *")).to_have_count(0)
    term.input.evaluate("el => el.blur()")
    term.page.mouse.click(500, 400)
    expect()(term.input).to_be_focused()


def test_the_view_follows_output_and_fits_a_360_pixel_screen(open_terminal, upstream):
    term = open_terminal(width=360, height=640)
    long_line = "x = " + "'a very long line of code that must scroll inside its block' + " * 4
    upstream.push(stream_scenario(["Some code:\n\n```python\n", long_line, "\n```\n\n",
                                   "| a | b |\n|---|---|\n| 1 | 2 |\n\n",
                                   "http://example.com/" + "long-path-" * 20]))
    for _ in range(3):
        term.type_command("help")
    term.chat("gpt chat -r cli show me code")
    expect()(term.last(".reply .answer pre code.hljs")).to_have_count(1)  # highlighted
    widths = term.page.evaluate(
        "() => [document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[0] <= widths[1], widths
    at_bottom = term.page.evaluate("""() => {
        const doc = document.scrollingElement;
        return doc.scrollHeight - (doc.scrollTop + innerHeight) <= 2;
    }""")
    assert at_bottom
    expect()(term.input).to_be_in_viewport()
    assert term.console_errors == []
