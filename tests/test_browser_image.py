"""`gpt image` in the web terminal, in Debian's headless Chromium against the real app under
gunicorn and the fake upstream: the images shown (from `data:` URLs, under the unchanged CSP),
bad options refused with the usage line, Ctrl+C stopping a request the upstream is still
working on, the help. Waiting is Playwright's or a threading Event, never a sleep."""

from __future__ import annotations

import pytest
import requests

from gpt_proxy.upstream.demo import placeholder_png

from .browser_helpers import WAIT_MS, expect
from .fake_upstream import Scenario, image_answer, json_scenario

pytestmark = pytest.mark.browser
pytest_plugins = ["tests.browser_fixtures"]

# The policies as they were before images: images from this origin and data: only.
HEADER_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
              "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
META_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'")
USAGE = "gpt image <prompt> [-n 1..5] [-s 256|512|1024]"


def image_requests(term) -> list[str]:
    return [url for url in term.requests if url.endswith("/api/gpt/getImage")]


def test_gpt_image_shows_n_images_from_data_urls_under_the_unchanged_csp(term, live, upstream):
    pngs = [placeholder_png(24, 24, f"image {i}") for i in range(3)]
    upstream.push(json_scenario(200, image_answer(pngs)))
    term.type_command("gpt image a lighthouse at night -n 3 -s 512")
    images = term.last(".image-result").locator(".image-grid img")
    expect()(images).to_have_count(3)
    term.wait_idle()
    for i in range(3):
        src = images.nth(i).get_attribute("src")
        assert src.startswith("data:image/png;base64,")
        # decoded and drawn: the page's CSP let it through
        term.page.wait_for_function("(img) => img.complete && img.naturalWidth === 24",
                                    arg=images.nth(i).element_handle())
    expect()(images.first).to_have_attribute("alt", "a lighthouse at night (image 1 of 3)")
    expect()(term.last(".image-result .reply-meta")).to_contain_text("3 images · 512x512")
    assert upstream.records[0].json == {"prompt": "a lighthouse at night", "n": 3,
                                        "size": "512x512", "response_format": "b64_json",
                                        "model": "dall-e-2"}
    assert requests.get(live.url + "/", timeout=5).headers["Content-Security-Policy"] == HEADER_CSP
    meta = term.page.locator("meta[http-equiv='Content-Security-Policy']").get_attribute("content")
    assert meta == META_CSP
    assert all(url.startswith((live.url, "data:")) for url in term.requests), term.requests
    assert term.console_errors == []


def test_options_go_before_or_after_the_prompt_and_quotes_stay_in_it(term, upstream):
    png = placeholder_png(8, 8, "x")
    upstream.push(json_scenario(200, image_answer([png])), json_scenario(200, image_answer([png])))
    term.type_command("gpt image -s 1024 the cat's \"best\" hat")
    expect()(term.last(".image-result").locator("img")).to_have_count(1)
    term.wait_idle()
    term.type_command("gpt image 'a -n b' --number=1")
    expect()(term.page.locator(".image-result")).to_have_count(2)
    term.wait_idle()
    sent = [upstream.wait_for_request(n).json for n in (1, 2)]
    assert (sent[0]["prompt"], sent[0]["size"], sent[0]["n"]) == (
        "the cat's \"best\" hat", "1024x1024", 1)
    assert sent[1]["prompt"] == "a -n b"


@pytest.mark.parametrize("line,words", [
    ("gpt image -n 9 a cat", '-n needs a number from 1 to 5, not "9"'),
    ("gpt image a cat -n 0", '-n needs a number from 1 to 5, not "0"'),
    ("gpt image a cat -s 300", '-s needs a size of 256, 512 or 1024, not "300"'),
    ("gpt image a cat -s 512x256", "-s needs a size of 256, 512 or 1024"),
    ("gpt image a cat -q 2", "unknown option -q"),
    ("gpt image --style vivid a cat", "unknown option --style"),
    ("gpt image a cat -n", "option -n needs a number from 1 to 5"),
    ("gpt image", "gpt image needs a prompt"),
    ("gpt image -n 2", "gpt image needs a prompt"),
])
def test_bad_options_are_refused_with_the_usage_line_and_nothing_is_asked(term, line, words):
    term.type_command(line)
    error = term.last(".error")
    expect()(error).to_contain_text(words)
    if "prompt" not in words:
        expect()(error.locator(".hint-line")).to_contain_text(USAGE)
    assert image_requests(term) == []


def test_ctrl_c_stops_it_and_the_upstream_sees_the_request_closed(term, upstream):
    upstream.push(Scenario(head_delay=60))  # an image model still drawing
    term.type_command("gpt image a slow painting -n 2")
    expect()(term.last(".image-result .waiting")).to_contain_text("making 2 images of 256x256")
    record = upstream.wait_for_request(1, timeout=WAIT_MS / 1000)
    term.input.press("Control+c")
    assert record.disconnected.wait(WAIT_MS / 1000), "the server kept its upstream open"
    expect()(term.last(".image-result .note")).to_contain_text("^C stopped: no image was made")
    term.wait_idle()
    expect()(term.page.locator("#stop")).to_be_hidden()
    expect()(term.last(".image-result .waiting")).to_have_count(0)
    assert term.console_errors == []


def test_an_upstream_refusal_is_shown_with_its_message(term, upstream):
    upstream.push(json_scenario(400, {"error": {"message": "Your prompt was rejected by the "
                                                           "safety system."}}))
    term.type_command("gpt image something rejected")
    error = term.last(".error")
    expect()(error).to_contain_text("no image was made:")
    expect()(error).to_contain_text("rejected by the safety system")
    expect()(error.locator(".hint-line")).to_contain_text("help gpt image")
    term.wait_idle()
    assert term.page.locator(".image-result").count() == 0


def test_help_gpt_image_explains_it_and_tab_completes_its_sizes(term):
    term.type_command("help gpt image")
    expect()(term.last(".heading")).to_have_text(USAGE)
    flags = term.last(".help-list").locator("dt").all_inner_texts()
    assert flags == ["-n, --number <1..5>", "-s, --size <256|512|1024>"]
    expect()(term.output).to_contain_text("e.g. gpt image -n 2 -s 512 a cat reading a newspaper")
    term.input.fill("gpt image a cat -s ")
    term.input.press("Tab")
    expect()(term.last(".choices")).to_have_text("256   512   1024")
    term.input.fill("gpt ima")
    term.input.press("Tab")
    expect()(term.input).to_have_value("gpt image ")
    expect()(term.hint.locator(".hint-usage")).to_have_text(USAGE)
