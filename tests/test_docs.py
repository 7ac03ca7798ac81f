"""The documentation site cannot fall behind the code.

- The site builds with `mkdocs build --strict` (a broken link, a missing anchor or picture,
  a page left out of the navigation fails it), and loads nothing from another host.
- Every setting the code reads is in the configuration reference with its default: the
  settings are found in the code (the parsers of `config.py`, the environment variables
  `gunicorn.conf.py`, `app.py` and `healthcheck.py` read), never from a list kept here.
- Every module of the package (walked recursively, so it holds once modules move into
  folders) is named on the architecture page, and every module named there exists; every
  metric the package defines is on the monitoring page; the README's links reach the site.
- The curl examples of Getting started run against the demo upstream under gunicorn, and
  each answer is of the kind the page shows below it: JSON with the fields and values shown,
  an event stream with the events shown, or plain text starting as shown.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import gpt_proxy
from gpt_proxy.base import config as config_module

from .conftest import ROOT, Gunicorn, sse_blocks

DOCS = ROOT / "docs"
PACKAGE = Path(gpt_proxy.__file__).resolve().parent
BUILD_ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
         "--site-dir", str(site)],
        cwd=config.parent, env=BUILD_ENV, capture_output=True, text=True, timeout=300)


# --- the strict build -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for the module's tests."""
    folder = tmp_path_factory.mktemp("docs-site") / "site"
    done = build(ROOT / "mkdocs.yml", folder)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    return folder


def test_the_site_builds_in_strict_mode_and_loads_nothing_from_another_host(site):
    pages = list(site.rglob("*.html"))
    assert len(pages) >= 20
    assert (site / "static" / "screenshot.png").is_file()
    external = re.compile(r"""<(?:script|img|iframe)[^>]*\ssrc=["']?(?:https?:)?//"""
                          r"""|<link[^>]*\shref=["']?(?:https?:)?//[^>]*>""", re.I)
    for page in pages:
        for found in external.finditer(page.read_text(encoding="utf-8")):
            # a link to a page elsewhere is fine; a script, picture or stylesheet is not
            assert found.group(0).startswith("<link") and "stylesheet" not in found.group(0) \
                and "preconnect" not in found.group(0), (page.name, found.group(0))


def test_the_readme_links_reach_pages_and_sections_of_the_site(site):
    """README.md is outside the strict build: its links into docs/ are checked here against
    the built pages (a page, and the section an anchor names)."""
    links = re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text(encoding="utf-8"))
    local = [link for link in links if not re.match(r"[a-z]+:", link)]
    assert len(local) >= 15
    for link in local:
        path, _, anchor = link.partition("#")
        assert (ROOT / path).exists(), f"README.md links {link}: no such file"
        if path.startswith("docs/") and path.endswith(".md"):
            page = site / (path[len("docs/"):-len(".md")] + ".html")
            assert page.is_file(), f"README.md links {link}: no page {page.name} built"
            if anchor:
                assert f'id="{anchor}"' in page.read_text(encoding="utf-8"), \
                    f"README.md links {link}: the page has no section #{anchor}"


@pytest.mark.parametrize("breakage", [
    ("security.md", "\n[a section that is not there](roles.md#no-such-section)\n"),
    ("security.md", "\n[a page that is not there](no-such-page.md)\n"),
    ("doors/openai.md", "\n![a picture that is not there](../static/no-such-picture.png)\n"),
], ids=["anchor", "page", "picture"])
def test_a_broken_link_fails_the_strict_build(tmp_path, breakage):
    copy = tmp_path / "project"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "site", "data", "__pycache__", ".hypothesis",
        ".pytest_cache", ".ruff_cache", "htmlcov", ".coverage*"))
    page, text = breakage
    with open(copy / "docs" / page, "a", encoding="utf-8") as file:
        file.write(text)
    done = build(copy / "mkdocs.yml", tmp_path / "site")
    assert done.returncode != 0
    assert "WARNING" in done.stderr and page.rpartition("/")[2] in done.stderr, done.stderr


# --- the configuration reference ---------------------------------------------------------------

def reference_rows() -> dict[str, str]:
    """`NAME` -> its default cell, for each row of the configuration reference's tables."""
    rows = {}
    for line in (DOCS / "configuration.md").read_text(encoding="utf-8").splitlines():
        found = re.match(r"\|\s*`([A-Z][A-Z0-9_]*)`\s*\|([^|]*)\|", line)
        if found:
            assert found.group(1) not in rows, f"{found.group(1)} has two rows"
            rows[found.group(1)] = found.group(2).strip()
    return rows


def shown(value: object) -> str | None:
    """A default as the reference writes it: `30` for 30.0, `0` for False, "empty" for an
    empty or absent value."""
    if value is None or value == "" or value == ():
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def config_settings() -> dict[str, object]:
    """Every variable config.py reads, with its default: one per parser (the name of a
    `Config` field), plus any variable read from the environment by name."""
    fields = {f.name: f for f in dataclasses.fields(config_module.Config)}
    settings = {}
    for name in config_module.PARSERS:
        field = fields[name]
        default = (field.default_factory() if field.default is dataclasses.MISSING
                   else field.default)
        settings[name.upper()] = default
    for name, default in environment_reads(Path(config_module.__file__)).items():
        settings.setdefault(name, default)
    return settings


def environment_reads(path: Path) -> dict[str, object]:
    """NAME -> default for each `os.environ.get("NAME", default)`, `environ["NAME"]` or
    `os.getenv("NAME", default)` in a file; a default given as `SOME_DICT["NAME"]` is looked
    up in that module-level dict; no default: None."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass

    def value(node: ast.expr | None) -> object:
        if node is None:
            return None
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            return constants.get(node.value.id, {}).get(ast.literal_eval(node.slice))
        try:
            return ast.literal_eval(node)
        except ValueError:
            return None

    reads = {}
    for node in ast.walk(tree):
        name = default = None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            func = ast.unparse(node.func)
            if func.endswith(("environ.get", "getenv")):
                name, default = node.args[0], value(node.args[1] if len(node.args) > 1 else None)
        elif isinstance(node, ast.Subscript) and ast.unparse(node.value).endswith("environ") \
                and isinstance(node.ctx, ast.Load):
            name = node.slice
        if isinstance(name, ast.Constant) and isinstance(name.value, str) \
                and re.fullmatch(r"[A-Z][A-Z0-9_]*", name.value):
            reads[name.value] = default
    return reads


def service_settings() -> dict[str, object]:
    settings = config_settings()
    for file in ("gunicorn.conf.py", "app.py", "healthcheck.py"):
        for name, default in environment_reads(ROOT / file).items():
            settings.setdefault(name, default)
    return settings


def test_the_settings_are_found_in_the_code():
    """The finder itself: it sees the parsers' settings, their defaults, and gunicorn's."""
    settings = service_settings()
    assert settings["OPENAI_MODEL"] == "gpt-4o-mini"
    assert settings["UPSTREAM_READ_TIMEOUT"] == 120.0
    assert settings["ALLOWED_MODELS"] == ()
    assert settings["BIND"] == "127.0.0.1:7345"
    assert settings["WEB_CONCURRENCY"] == "2"
    assert len(settings) >= len(config_module.PARSERS) + 8


def test_every_setting_the_code_reads_is_in_the_reference_with_its_default():
    rows = reference_rows()
    missing = sorted(set(service_settings()) - set(rows))
    assert not missing, f"docs/configuration.md has no row for {missing}"
    for name, default in service_settings().items():
        cell = rows[name]
        text = shown(default)
        if text is None:
            assert cell.lower().startswith("empty"), f"{name}: the default is empty, not {cell}"
        else:
            assert f"`{text}`" in cell, f"{name}: the default is `{text}`, the reference: {cell}"


def test_every_row_of_the_reference_is_a_setting_something_reads():
    """A setting removed from the code leaves no row behind (compose's own variables are
    read by compose.yaml)."""
    compose = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    stale = [name for name in reference_rows()
             if name not in service_settings() and f"${{{name}" not in compose]
    assert not stale, f"docs/configuration.md documents what nothing reads: {stale}"


def test_every_setting_of_config_has_a_line_in_env_example():
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    missing = [name for name in config_settings()
               if not re.search(rf"^#? ?{name}=", example, re.M)]
    assert not missing, f".env.example has no line for {missing}"


# --- the architecture page --------------------------------------------------------------------

def test_every_module_of_the_package_is_on_the_architecture_page():
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`(gpt_proxy/[\w/]*(?:\.py|/))`", page))
    modules = sorted(path.relative_to(PACKAGE.parent).as_posix()
                     for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts)
    assert "gpt_proxy/base/config.py" in modules or any(m.endswith("/config.py") for m in modules)
    missing = [module for module in modules if module not in named
               and not (module.endswith("/__init__.py") and module != "gpt_proxy/__init__.py"
                        and module[:-len("__init__.py")] in named)]
    assert not missing, f"docs/architecture.md does not name {missing}"
    gone = sorted(path for path in named if not (PACKAGE.parent / path).exists())
    assert not gone, f"docs/architecture.md names modules that do not exist: {gone}"


# --- the monitoring page ------------------------------------------------------------------------

def test_every_metric_the_package_defines_is_on_the_monitoring_page():
    page = (DOCS / "monitoring.md").read_text(encoding="utf-8")
    metrics = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func).rpartition(".")[2] in (
                    "Counter", "Gauge", "Histogram", "Summary") and node.args \
                    and isinstance(node.args[0], ast.Constant):
                metrics.add(node.args[0].value)
    assert "gpt_proxy_requests" in metrics
    missing = sorted(name for name in metrics if f"`{name}" not in page)
    assert not missing, f"docs/monitoring.md does not list {missing}"


# --- Getting started, run -----------------------------------------------------------------------

def examples() -> list[tuple[str, str, str]]:
    """(command, kind of answer, answer) for each curl example of Getting started: a `sh`
    block that is one curl command, and the block after it, the answer shown."""
    blocks = FENCE.findall((DOCS / "getting-started.md").read_text(encoding="utf-8"))
    found = []
    for index, (language, body) in enumerate(blocks):
        if language == "sh" and body.lstrip().startswith("curl "):
            assert index + 1 < len(blocks) and blocks[index + 1][0] in ("json", "text"), \
                f"the example {body.strip()!r} shows no answer after it"
            found.append((body.strip(), *blocks[index + 1]))
    return found


EXAMPLES = examples()
VARYING = {"created", "prompt_tokens", "completion_tokens", "total_tokens"}  # time, machine


def like(shown_value: object, actual: object, where: str = "answer") -> None:
    """`actual` is of the kind `shown_value` shows: every field shown is there, alike; a
    string shown with `...` is a prefix; a list shown is matched by its first item."""
    if isinstance(shown_value, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not an object"
        for key, value in shown_value.items():
            assert key in actual, f"{where}: no field {key!r} in {actual!r}"
            if key in VARYING:
                assert type(actual[key]) is type(value), f"{where}.{key}: {actual[key]!r}"
            else:
                like(value, actual[key], f"{where}.{key}")
    elif isinstance(shown_value, list):
        assert isinstance(actual, list), f"{where}: {actual!r} is not a list"
        if shown_value:
            assert actual, f"{where}: empty"
            like(shown_value[0], actual[0], f"{where}[0]")
    elif isinstance(shown_value, str) and "..." in shown_value:
        start = shown_value.split("...")[0]
        assert isinstance(actual, str) and actual.startswith(start), \
            f"{where}: {actual!r} does not start with {start!r}"
    else:
        assert actual == shown_value and type(actual) is type(shown_value), \
            f"{where}: {actual!r}, the docs show {shown_value!r}"


def events(text: str) -> list[tuple[str, object]]:
    """(event name, parsed data) of each event of an SSE text; a `...` line stands for
    events left out."""
    text = "\n".join(line for line in text.splitlines() if line.strip() != "...")
    return [(name, json.loads(data)) for _, name, data, _ in sse_blocks(text)
            if data is not None]


def is_sse(text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0]
    return first.startswith((":", "data:", "event:", "id:"))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The service under gunicorn with no key: the demo upstream answers, as after
    `make run` on a fresh machine."""
    folder = tmp_path_factory.mktemp("docs-demo")
    server = Gunicorn({"WEB_CONCURRENCY": "1", "AUTH": "open", "PROXY_TOKEN": "",
                       "RATE_LIMIT": "", "ALLOWED_HOSTS": "", "ROLES_DIR": "roles",
                       "CONVERSATION_STORE": f"sqlite:///{folder}/conversations.db"},
                      folder / "gunicorn.log")
    yield server
    server.stop()


def test_getting_started_shows_curl_examples():
    commands = " ".join(command for command, _, _ in EXAMPLES)
    assert len(EXAMPLES) >= 8
    for path in ("/healthz", "/api/gpt/get", "/v1/chat/completions", "/api/gpt/getImage"):
        assert path in commands


@pytest.mark.parametrize("command,kind,answer", EXAMPLES,
                         ids=[re.sub(r"\s+", " ", c)[:60] for c, _, _ in EXAMPLES])
def test_a_getting_started_example_gives_the_answer_shown(demo, command, kind, answer):
    argv = shlex.split(command.replace("\\\n", " ").replace("http://127.0.0.1:7345", demo.url))
    assert argv[0] == "curl"
    done = subprocess.run(["curl", "-sS", "--max-time", "60", *argv[1:]],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr
    output = done.stdout
    if kind == "json":
        try:
            shown_value = json.loads(answer)
        except ValueError as exc:
            pytest.fail(f"the answer shown is not valid JSON ({exc}): {answer}")
        like(shown_value, json.loads(output))
    elif is_sse(answer):
        assert is_sse(output), output[:300]
        actual = events(output)
        rest = iter(actual)
        for name, data in events(answer):  # in order, others between them allowed
            for got_name, got in rest:
                if got_name == name and type(got) is type(data):
                    try:
                        like(data, got)
                        break
                    except AssertionError:
                        continue
            else:
                pytest.fail(f"no event {name} {data} (in order) in {actual}")
        assert actual[-1][0] == events(answer)[-1][0], "the stream ends as shown"
    else:
        start = answer.split("...")[0].strip()
        assert output.startswith(start), f"{output[:300]!r} does not start with {start!r}"
        assert not is_sse(output)
        with pytest.raises(ValueError):
            json.loads(output)


def test_the_sdk_example_of_getting_started_runs(demo):
    blocks = [body for language, body in
              FENCE.findall((DOCS / "getting-started.md").read_text(encoding="utf-8"))
              if language == "python" and "OpenAI(" in body]
    assert len(blocks) == 1
    code = blocks[0].replace("http://127.0.0.1:7345", demo.url)
    env = {**os.environ, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("**[demo]** This is gpt_proxy's demo upstream"), done.stdout
