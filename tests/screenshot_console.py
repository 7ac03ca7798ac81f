"""Make static/screenshot-console-user.png and static/screenshot-console-admin.png, the
docs' pictures of the console: the real app under gunicorn with accounts, a few weeks of
spend by three models and two users written into the ledger through the real routes (the fake
upstream answering), Debian's Chromium through Playwright.

    .venv/bin/python -m tests.screenshot_console [folder]

Not a test (pytest does not collect it); it uses the tests' fakes so the pictures need no key
and no network. Spend over past days is backdated in the ledger's own rows (the service only
ever writes "now"), then the day rollups are rebuilt by the service's own code on read.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import requests
from playwright.sync_api import sync_playwright

from .conftest import ROOT, serve
from .fake_upstream import FakeUpstream, stream_scenario

TOKEN = "screenshot-admin-token-0123456789"
PASSWORD = "a long password 1"
PRICES = """
[models."gpt-4o"]
input = 2.5
output = 10
[models."gpt-4o-mini"]
input = 0.15
output = 0.6
[models."o1-mini"]
input = 1.1
output = 4.4
"""


def api(url: str, method: str, path: str, **body) -> dict:
    answer = requests.request(method, url + path, json=body or None, timeout=10,
                              headers={"Authorization": f"Bearer {TOKEN}"})
    answer.raise_for_status()
    return answer.json()


def chat(url: str, upstream, key: str, model: str, words: int) -> None:
    upstream.push(stream_scenario(["word "] * words))
    answer = requests.post(f"{url}/v1/chat/completions", timeout=10, headers={
        "Authorization": f"Bearer {key}"}, json={"model": model, "stream": True, "messages": [
            {"role": "user", "content": "hello " * words}]})
    answer.raise_for_status()
    assert answer.content is not None  # read to its end


def main(folder: Path) -> None:
    upstream = FakeUpstream().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prices = Path(tmp) / "prices.toml"
            prices.write_text(PRICES)
            with serve(upstream, Path(tmp), AUTH="users", PROXY_TOKEN=TOKEN,
                       PRICES_FILE=str(prices), DEFAULT_PRICE="1/2",
                       CONVERSATION_STORE=f"sqlite:///{tmp}/c.db") as server, \
                    sync_playwright() as playwright:
                url = server.url
                ann = api(url, "POST", "/api/admin/users", username="ann", password=PASSWORD)
                api(url, "POST", "/api/admin/users", username="root", password=PASSWORD,
                    admin=True)
                api(url, "POST", "/api/admin/users", username="bob", password=PASSWORD)
                laptop = api(url, "POST", "/api/admin/keys", user="ann", name="laptop")["key"]
                script = api(url, "POST", "/api/admin/keys", user="ann", name="nightly script",
                             models=["gpt-4o-mini"])["key"]
                bobs = api(url, "POST", "/api/admin/keys", user="bob", name="bob's editor")["key"]
                api(url, "POST", "/api/admin/budgets", scope="user", subject=ann["id"],
                    unit="usd", period="month", limit="20.00")
                api(url, "POST", "/api/admin/budgets", scope="user", subject=ann["id"],
                    unit="tokens", period="day", limit=200000)
                api(url, "POST", "/api/admin/budgets", scope="service", unit="usd",
                    period="month", limit="500.00")
                for day in range(14):
                    chat(url, upstream, laptop, "gpt-4o", 40 + 25 * (day % 5))
                    chat(url, upstream, script, "gpt-4o-mini", 300 + 40 * day)
                    chat(url, upstream, laptop, "o1-mini", 60 + 10 * (day % 3))
                    chat(url, upstream, bobs, "gpt-4o-mini", 80)
                    backdate(Path(tmp) / "gpt_proxy.db", 13 - day)
                browser = playwright.chromium.launch(
                    executable_path="/usr/bin/chromium",
                    args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
                for who, hash_, out in (("ann", "usage", "screenshot-console-user.png"),
                                        ("root", "admin/overview",
                                         "screenshot-console-admin.png")):
                    page = browser.new_page(viewport={"width": 1280, "height": 1000})
                    page.goto(f"{url}/console")
                    page.wait_for_selector("html[data-ready='true']")
                    page.fill("#sign-in-user", who)
                    page.fill("#sign-in-password", PASSWORD)
                    page.press("#sign-in-password", "Enter")
                    page.wait_for_selector("#who:not(:empty)")
                    page.evaluate(f"location.hash = '{hash_}'")
                    page.wait_for_function(
                        "(p) => document.getElementById('main').dataset.page === p && "
                        "document.getElementById('main').dataset.loaded === 'true'", arg=hash_)
                    page.locator(".chart .plot").first.focus()
                    page.keyboard.press("End")
                    page.keyboard.press("ArrowLeft")
                    page.evaluate("window.scrollTo(0, 0)")  # the page's top, the chart's tooltip
                    page.screenshot(path=str(folder / out), full_page=False)
                    page.close()
                browser.close()
    finally:
        upstream.stop()


def backdate(database: Path, days: int) -> None:
    """Move the ledger rows written just now `days` days into the past (and the rollups with
    them: they are dropped, and the service sums the rows again)."""
    import sqlite3

    with sqlite3.connect(database) as conn:
        conn.execute("UPDATE ledger SET created = created - ?, finished = finished - ? "
                     "WHERE id > (SELECT COALESCE(MAX(id), 0) FROM ledger WHERE created < "
                     "strftime('%s','now') - 3600)", (days * 86400, days * 86400))
        tables = [row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'usage_%'")]
        for name in tables:  # the rollups (and their watermark) are made again on read
            conn.execute(f"DELETE FROM {name}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "static")
