"""The console (/console) in Debian's Chromium through Playwright, against the real app under
gunicorn (a server of this module's own: AUTH=users, a price for every model, a breaker that
opens after two failures) and the fake upstream. A user signs in and manages keys, budgets
and usage; an admin manages users and budgets, reads the ledger and the upstreams. Every page
is checked at 390, 1280 and 1920 px for sideways scrolling and text squeezed into a sliver,
and for console errors and CSP violations; hostile names render as text. The web terminal's
`help` keeps a sane height at the same widths.

Setup that is not what a test is about (users, spend) goes through the JSON API with the
proxy token, as a script would; what a test is about is done in the page, as a person would.
Waiting is Playwright's (or a bounded poll), never a sleep.
"""

from __future__ import annotations

import itertools
import re

import pytest
import requests

from .browser_helpers import WAIT_MS, expect
from .conftest import serve
from .fake_upstream import json_scenario, stream_scenario

pytestmark = pytest.mark.browser
pytest_plugins = ["tests.browser_fixtures"]

ADMIN_TOKEN = "console-admin-token-0123456789"
PASSWORD = "a long password 1"
HOSTILE = '<img src=x onerror="window.__pwned=1">'
WIDTHS = (390, 1280, 1920)
_names = itertools.count(1)


def new_name(stem: str) -> str:
    return f"{stem}{next(_names)}"


@pytest.fixture(scope="module")
def server(fake_upstream, tmp_path_factory):
    folder = tmp_path_factory.mktemp("console")
    with serve(fake_upstream, folder, AUTH="users", REGISTRATION="open", PROXY_TOKEN=ADMIN_TOKEN,
               LOGIN_LIMIT="1000/minute", DEFAULT_PRICE="150/600", UPSTREAM_FAILURES="2",
               UPSTREAM_COOLDOWN="600", CONNECT_RETRIES="0",
               CONVERSATION_STORE=f"sqlite:///{folder}/conversations.db") as running:
        yield running


def admin_api(server, method: str, path: str, **body):
    answer = requests.request(method, server.url + path, json=body or None, timeout=10,
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def make_user(server, name: str, *, admin: bool = False) -> dict:
    return admin_api(server, "POST", "/api/admin/users", username=name, password=PASSWORD,
                     admin=admin)


def spend(server, upstream, key: str, model: str, tokens: int = 3) -> None:
    """One streamed chat request with `key` for `model`: 5 prompt and `tokens` completion
    tokens, ledgered at DEFAULT_PRICE."""
    upstream.push(stream_scenario(["ok"] * tokens))
    answer = requests.post(f"{server.url}/v1/chat/completions", timeout=10, json={
        "model": model, "stream": True, "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"})
    assert answer.status_code == 200, answer.text
    assert answer.content  # read to its end: the ledger row is written as the reply ends


# --- the page -------------------------------------------------------------------------------

CSP_WATCH = """
window.__csp = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
"""

# Layout problems of the page as shown: sideways scrolling, and text squeezed narrower than
# three characters (or than itself, when shorter) in any line it is drawn in.
LAYOUT = """
() => {
  const problems = [];
  const doc = document.scrollingElement;
  if (doc.scrollWidth > window.innerWidth) {
    problems.push(`the page scrolls sideways: ${doc.scrollWidth} > ${window.innerWidth}`);
  }
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const text = node.textContent.trim();
    const el = node.parentElement;
    if (!text || !el || el.closest('.visually-hidden, [hidden], details:not([open]) > :not(summary), .skip')) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    const rects = [...range.getClientRects()].filter((r) => r.width > 0 || r.height > 0);
    if (!rects.length) continue;
    const size = parseFloat(getComputedStyle(el).fontSize) || 14;
    const widest = Math.max(...rects.map((r) => r.width));
    const wanted = Math.min(text.length, 3) * size * 0.5;
    if (widest < wanted) problems.push(`squeezed (${Math.round(widest)} px): ${text.slice(0, 40)}`);
  }
  return problems;
}
"""


class Console:
    """The console in one browser page, with what it logged."""

    def __init__(self, page, url: str) -> None:
        self.page = page
        self.url = url
        self.errors: list[str] = []
        self.failed: list[tuple[int, str]] = []  # responses of 400 and above: (status, path)
        page.on("response", lambda r: self.failed.append(
            (r.status, r.url.removeprefix(url).split("?")[0])) if r.status >= 400 else None)
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.add_init_script(CSP_WATCH)
        page.set_default_timeout(WAIT_MS)

    def open(self, hash_: str = "") -> Console:
        self.page.goto(f"{self.url}/console{'#' + hash_ if hash_ else ''}")
        self.page.wait_for_selector("html[data-ready='true']")
        self.wait_loaded()
        return self

    def wait_loaded(self, page: str | None = None) -> None:
        self.page.wait_for_function(
            "(p) => { const m = document.getElementById('main');"
            " return m.dataset.loaded === 'true' && (!p || m.dataset.page === p); }", arg=page)

    def sign_in(self, name: str, password: str = PASSWORD) -> None:
        self.page.fill("#sign-in-user", name)
        self.page.fill("#sign-in-password", password)
        self.page.press("#sign-in-password", "Enter")
        expect()(self.page.locator("#who")).to_contain_text(name)
        self.wait_loaded()

    def go(self, page: str) -> None:
        """Follow the navigation's link to `page` with the keyboard."""
        link = self.page.locator(f"#nav a[href='#{page}']")
        link.focus()
        link.press("Enter")
        self.wait_loaded(page)

    def layout_problems(self) -> list[str]:
        return self.page.evaluate(LAYOUT)

    def check_clean(self) -> None:
        """No failed request, no error in the console, no CSP violation, no injected markup."""
        assert self.failed == [], self.failed
        assert self.errors == [], self.errors
        assert self.page.evaluate("window.__csp") == []
        assert self.page.evaluate("window.__pwned") is None


@pytest.fixture()
def open_console(chromium, server, upstream):
    contexts = []

    def open_(width: int = 1280, height: int = 900, hash_: str = "") -> Console:
        context = chromium.new_context(viewport={"width": width, "height": height},
                                       accept_downloads=True)
        contexts.append(context)
        return Console(context.new_page(), server.url).open(hash_)

    yield open_
    for context in contexts:
        context.close()


# --- numbers for people --------------------------------------------------------------------------

def test_money_and_counts_are_formatted_for_people_never_in_exponent_notation(open_console):
    console = open_console()
    shown = console.page.evaluate("""async () => {
      const f = await import('/static/js/console-format.js');
      return [0, '0.000000', 2e-7, 0.00009999, '0.000100', '0.004200', 0.12345, 0.5, 0.99999,
              1, 1234.567, -0.004].map(f.money).concat([f.count(1234567), f.count(0)]);
    }""")
    assert shown == ["$0", "$0", "<$0.0001", "<$0.0001", "$0.0001", "$0.0042", "$0.1235",
                     "$0.50", "$1.00", "$1.00", "$1,234.57", "-$0.004", "1,234,567", "0"]
    console.check_clean()


# --- a user ----------------------------------------------------------------------------------------

def test_a_user_makes_and_revokes_a_key_sees_budget_bars_and_a_usage_chart_equal_to_the_api(
        open_console, server, upstream):
    name = new_name("una")
    user = make_user(server, name)
    admin_api(server, "POST", "/api/admin/budgets", scope="user", subject=user["id"],
              unit="tokens", period="day", limit=10_000)
    admin_api(server, "POST", "/api/admin/budgets", scope="user", subject=user["id"],
              unit="usd", period="month", limit="5.00")
    console = open_console()
    expect()(console.page.locator("h1")).to_have_text("Sign in to the console")
    console.sign_in(name)

    # Make a key from the keyboard: the key is shown once, with a Copy button.
    console.go("keys")
    console.page.fill("#key-name", "laptop")
    console.page.fill("#key-days", "30")
    console.page.fill("#key-models", "model-a, model-b")
    console.page.press("#key-models", "Enter")
    secret = console.page.locator(".new-key .secret-key")
    expect()(secret).to_have_text(re.compile(r"^\S{20,}$"))
    key = secret.inner_text()
    expect()(console.page.locator(".new-key button.copy")).to_be_focused()
    row = console.page.locator("tbody tr", has_text="laptop")
    expect()(row).to_contain_text("model-a, model-b")
    expect()(row).to_contain_text("never")  # never used yet

    spend(server, upstream, key, "model-a", tokens=3)
    spend(server, upstream, key, "model-a", tokens=4)
    spend(server, upstream, key, "model-b", tokens=2)

    # Budgets: bars with what is left and when they reset.
    console.go("budgets")
    tokens_bar = console.page.locator(".budget", has_text="tokens today")
    expect()(tokens_bar).to_contain_text("24 tokens of 10,000 tokens")
    expect()(tokens_bar).to_contain_text("9,976 tokens left")
    expect()(tokens_bar).to_contain_text("resets")
    expect()(tokens_bar.locator("[role=meter]")).to_have_attribute("aria-valuenow", "24")
    money_bar = console.page.locator(".budget", has_text="spend this month")
    expect()(money_bar).to_contain_text("of $5.00")

    # Usage: the totals the chart is drawn from equal what /api/usage adds up to.
    console.go("usage")
    api = console.page.evaluate("async () => (await fetch('/api/usage?days=30')).json()")
    rows = api["by_day"]
    requests_total = sum(r["requests"] for r in rows)
    tokens_total = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    cost_total = sum(float(r["cost"]) for r in rows)
    assert requests_total == 3 and tokens_total == 24
    money = console.page.evaluate(
        "async (v) => (await import('/static/js/console-format.js')).money(v)", cost_total)
    expect()(console.page.locator("#usage-total-requests")).to_have_text("3")
    expect()(console.page.locator("#usage-total-tokens")).to_have_text("24")
    expect()(console.page.locator("#usage-total-cost")).to_have_text(money)
    legend = console.page.locator(".legend-item")
    expect()(legend).to_have_text(["model-a", "model-b"])
    # Hover: the day's values; the legend hides a series; the log scale is a click away.
    console.page.locator(".plot").focus()
    console.page.keyboard.press("End")
    tooltip = console.page.locator(".tooltip")
    expect()(tooltip).to_contain_text("model-a")
    expect()(tooltip).to_contain_text("model-b")
    console.page.locator(".plot .overlay").hover()
    expect()(tooltip).to_be_visible()
    legend.filter(has_text="model-b").click()
    expect()(legend.filter(has_text="model-b")).to_have_attribute("aria-pressed", "false")
    console.page.locator(".plot .overlay").hover(position={"x": 5, "y": 5})
    expect()(tooltip).not_to_contain_text("model-b")
    console.page.get_by_label("Log").check()
    console.page.select_option("#usage-measure", "tokens")
    expect()(console.page.locator(".chart figcaption")).to_contain_text("Tokens per day")
    console.page.select_option("#usage-by", "key")
    expect()(console.page.locator(".legend-item")).to_have_text(["laptop"])

    # Revoke: a second press confirms; the key then stops working.
    console.go("keys")
    revoke = console.page.locator("tbody tr", has_text="laptop").get_by_role("button")
    revoke.focus()
    revoke.press("Enter")
    expect()(revoke).to_have_text("Confirm revoke")
    revoke.press("Enter")
    expect()(console.page.locator(".status.ok")).to_contain_text("revoked key")
    expect()(console.page.locator("tbody tr", has_text="laptop")).to_contain_text("revoked")
    refused = requests.get(f"{server.url}/v1/models", timeout=10,
                           headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 401
    console.check_clean()


# --- an admin --------------------------------------------------------------------------------------

@pytest.fixture()
def admin_console(open_console, server):
    name = new_name("root")
    make_user(server, name, admin=True)

    def open_(width: int = 1280, hash_: str = "") -> Console:
        console = open_console(width=width, hash_=hash_)
        console.sign_in(name)
        if hash_:
            console.wait_loaded(hash_)
        return console
    return open_


def test_an_admin_makes_a_user_sets_a_budget_and_sees_it_fill_as_requests_run(
        admin_console, server, upstream):
    console = admin_console()
    console.go("admin/users")
    name = new_name("bea")
    console.page.fill("#new-user-name", name)
    console.page.fill("#new-user-password", PASSWORD)
    console.page.press("#new-user-password", "Enter")
    expect()(console.page.locator(".status.ok")).to_contain_text(f"made user {name}")
    expect()(console.page.locator("tbody tr", has_text=name)).to_contain_text("active")
    console.page.fill("#user-search", name)
    expect()(console.page.locator(".user-list tbody tr")).to_have_count(1)

    console.go("admin/budgets")
    console.page.select_option("#budget-scope", "user")
    console.page.select_option("#budget-user", label=name)
    console.page.select_option("#budget-unit", "tokens")
    console.page.select_option("#budget-period", "day")
    console.page.fill("#budget-limit", "1000")
    console.page.press("#budget-limit", "Enter")
    bar = console.page.locator(".budget", has_text=f"user {name}")
    expect()(bar).to_contain_text("0 tokens of 1,000 tokens")

    key = admin_api(server, "POST", "/api/admin/keys", user=name, name="script")["key"]
    spend(server, upstream, key, "model-a", tokens=5)
    console.page.get_by_role("button", name="Refresh").click()
    expect()(bar).to_contain_text("10 tokens of 1,000 tokens")
    spend(server, upstream, key, "model-a", tokens=5)
    # The page asks again by itself.
    expect()(bar).to_contain_text("20 tokens of 1,000 tokens", timeout=15_000)
    expect()(bar.locator("[role=meter]")).to_have_attribute("aria-valuenow", "20")

    # Change its limit, then delete it.
    row = console.page.locator(".budget-row", has_text=f"user {name}")
    row.get_by_role("textbox").fill("2000")
    row.get_by_role("button", name="Change limit").click()
    expect()(console.page.locator(".budget", has_text=f"user {name}")).to_contain_text(
        "20 tokens of 2,000 tokens")
    console.page.locator(".budget-row", has_text=f"user {name}").get_by_role(
        "button", name=re.compile("Delete")).click()
    expect()(console.page.locator(".budget", has_text=f"user {name}")).to_have_count(0)
    console.check_clean()


def test_an_admin_filters_the_ledger_and_downloads_the_filter_as_csv(
        admin_console, server, upstream):
    name = new_name("cid")
    make_user(server, name)
    key = admin_api(server, "POST", "/api/admin/keys", user=name, name="k")["key"]
    spend(server, upstream, key, "model-a")
    spend(server, upstream, key, "model-b")
    console = admin_console()
    console.go("admin/ledger")
    console.page.fill("#ledger-user", name)
    console.page.fill("#ledger-model", "model-b")
    console.page.press("#ledger-model", "Enter")
    rows = console.page.locator(".ledger-rows tbody tr")
    expect()(rows).to_have_count(1)
    expect()(rows).to_contain_text("model-b")
    with console.page.expect_download() as caught:
        console.page.locator("#ledger-csv").click()
    text = open(caught.value.path(), encoding="utf-8").read()
    lines = [line for line in text.splitlines() if line]
    assert lines[0].startswith("id,")
    models = {line.split(",")[lines[0].split(",").index("model")] for line in lines[1:]}
    assert models == {"model-b"}, text
    console.check_clean()


def test_an_admin_sees_an_upstreams_breaker_open_when_it_fails(admin_console, server, upstream):
    console = admin_console(hash_="admin/upstreams")
    expect()(console.page.locator(".state")).to_have_text(["in use"])
    name = make_user(server, new_name("dan"))["username"]
    key = admin_api(server, "POST", "/api/admin/keys", user=name, name="k")["key"]
    for _ in range(2):
        upstream.push(json_scenario(500, {"error": {"message": "down"}}))
        answer = requests.post(f"{server.url}/v1/chat/completions", timeout=10, json={
            "model": "model-a", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code >= 500
    console.page.get_by_role("button", name="Refresh").click()
    expect()(console.page.locator(".state")).to_have_text([re.compile("open")])
    console.check_clean()


# --- hostile names, and every page at three widths ----------------------------------------------

def test_a_hostile_key_name_model_name_and_username_render_as_text(
        admin_console, server, upstream):
    from gpt_proxy.db import open_database

    from .conftest import ROOT

    name = new_name("eve")
    user = make_user(server, name)
    made = admin_api(server, "POST", "/api/admin/keys", user=name, name=HOSTILE)
    spend(server, upstream, made["key"], HOSTILE)
    database = open_database(f"sqlite:///{server.log_path.parent}/gpt_proxy.db", ROOT)
    try:  # a username the service would refuse: as if written by something else
        with database.write() as conn:
            conn.exec_driver_sql("UPDATE users SET username = ? WHERE id = ?",
                                 (HOSTILE + name, user["id"]))
    finally:
        database.close()
    console = admin_console()
    for page in ("admin/users", "admin/keys", "admin/ledger"):
        console.go(page)
        expect()(console.page.locator("main")).to_contain_text(HOSTILE)
        assert console.page.locator("main img").count() == 0
    console.go("admin/ledger")
    console.page.fill("#ledger-model", HOSTILE)
    console.page.press("#ledger-model", "Enter")
    expect()(console.page.locator(".ledger-rows tbody tr")).to_have_count(1)
    console.check_clean()


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_fits_the_width_without_sideways_scrolling_or_squeezed_text(
        admin_console, server, upstream, width):
    name = new_name("fay")
    make_user(server, name)
    key = admin_api(server, "POST", "/api/admin/keys", user=name,
                    name="a key with a rather long name for a narrow screen")["key"]
    spend(server, upstream, key, "a-model-with-a-long-name-2026-11-01-preview")
    console = admin_console(width=width)
    pages = [a.get_attribute("href")[1:] for a in console.page.locator("#nav a").all()]
    assert len(pages) == 9, pages
    for page in pages:
        console.go(page)
        assert console.layout_problems() == [], (page, width)
    console.check_clean()


@pytest.mark.parametrize("width", WIDTHS)
def test_the_terminals_help_keeps_its_descriptions_readable_at_every_width(
        open_terminal, width):
    term = open_terminal(width=width, height=900)
    term.type_command("help")
    term.page.locator("#output .help-list.keys").wait_for()
    height = term.page.evaluate("document.scrollingElement.scrollHeight")
    assert height < 4000, height
    widths = term.page.evaluate(
        "[...document.querySelectorAll('#output .help-list dd')].map((d) => d.clientWidth)")
    assert min(widths) >= 150, widths
    assert term.page.evaluate(LAYOUT) == []
    assert term.console_errors == []


def test_the_console_command_opens_the_console(open_terminal):
    term = open_terminal()
    term.type_command("console")
    term.page.wait_for_url("**/console")
    term.page.wait_for_selector("html[data-ready='true']")
    expect()(term.page.locator("h1")).to_have_text("Console")  # this server has no accounts
