"""Role templates: parsing, substitution, the registry (safety, reloads, threads), assembly."""

from __future__ import annotations

import datetime
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpt_proxy.base.errors import BadRequest, PayloadTooLarge, UnknownRole
from gpt_proxy.pipeline import roles
from gpt_proxy.pipeline.roles import RoleFileError, RoleRegistry, assemble_messages, parse_role

from .conftest import FakeClock

SHIPPED = Path(__file__).resolve().parent.parent / "roles"

SIMPLE = """\
---
description: A test role
---
# SYSTEM
You help on ${OS}.

# USER
hi

# ASSISTANT
hello
"""


def write(folder: Path, name: str, text: str, mtime: int | None = None) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def kinds_and_texts(role: roles.Role) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in role.render()]


# --- parsing -----------------------------------------------------------------------------

def test_sections_become_messages_in_order():
    role = parse_role("t", SIMPLE)
    assert [kind for kind, _ in role.messages] == ["system", "user", "assistant"]
    assert role.messages[1:] == (("user", "hi"), ("assistant", "hello"))
    assert role.description == "A test role"
    assert role.examples == 1


def test_headings_are_case_insensitive_and_allow_trailing_space():
    role = parse_role("t", "# system  \nS\n#\tUser\nU\n# Assistant \t\nA\n")
    assert role.messages == (("system", "S"), ("user", "U"), ("assistant", "A"))


def test_inner_blank_lines_kept_and_outer_whitespace_trimmed():
    role = parse_role("t", "# SYSTEM\n\n\n  line one\n\n\nline two  \n\n\n")
    assert role.messages == (("system", "line one\n\n\nline two"),)


def test_heading_inside_code_fence_is_content():
    text = "# SYSTEM\nExample:\n```md\n# USER\nnot a turn\n```\n# USER\nq\n# ASSISTANT\na\n"
    role = parse_role("t", text)
    assert role.messages[0] == ("system", "Example:\n```md\n# USER\nnot a turn\n```")
    assert role.examples == 1


def test_tilde_and_longer_fences_only_close_on_a_matching_marker():
    text = "# SYSTEM\n~~~~\n~~~\n# ASSISTANT\n```\n~~~~\n# USER\nq\n# ASSISTANT\na\n"
    role = parse_role("t", text)
    assert role.messages[0] == ("system", "~~~~\n~~~\n# ASSISTANT\n```\n~~~~")


def test_lower_level_headings_and_hash_lines_are_content():
    text = "# SYSTEM\n## Rules\n#!/bin/sh\n#hashtag\n"
    assert parse_role("t", text).messages == (("system", "## Rules\n#!/bin/sh\n#hashtag"),)


def test_front_matter_keys_quotes_and_comments():
    text = ('---\n# a comment\ndescription: "Quoted: with colon"\nAuthor: me\n\n---\n'
            "# SYSTEM\nx\n")
    role = parse_role("t", text)
    assert role.description == "Quoted: with colon"
    assert role.meta == {"description": "Quoted: with colon", "author": "me"}


def test_front_matter_model_is_the_roles_model():
    role = parse_role("t", "---\nmodel: 'deepseek/deepseek-chat:free'\n---\n# SYSTEM\nx\n")
    assert role.model == "deepseek/deepseek-chat:free"
    assert role.summary() == {"name": "t", "description": "", "examples": 0,
                              "model": "deepseek/deepseek-chat:free"}
    assert parse_role("t", "# SYSTEM\nx\n").model is None


def test_no_front_matter_means_empty_description():
    assert parse_role("t", "# SYSTEM\nx\n").description == ""


def test_front_matter_alone_is_a_role_without_messages():
    role = parse_role("t", "---\ndescription: nothing\n---\n\n")
    assert role.messages == () and role.examples == 0


def test_crlf_and_bom_are_accepted():
    role = parse_role("t", b"\xef\xbb\xbf# SYSTEM\r\na\r\n\r\nb\r\n")
    assert role.messages == (("system", "a\n\nb"),)


@pytest.mark.parametrize(("text", "line", "words"), [
    ("", 1, "empty"),
    ("  \n\n\t\n", 1, "empty"),
    ("hello\n# SYSTEM\nx\n", 1, "before the first"),
    ("\n\nintro\n# USER\nq\n# ASSISTANT\na\n", 3, "before the first"),
    ("# SYSTEM\nx\n# FOO\ny\n", 3, "unknown heading '# FOO'"),
    ("# SYSTEM\nx\n#\n", 3, "unknown heading"),
    ("---\ndescription: x\n# SYSTEM\nx\n", 1, "never closed"),
    ("---\ndescription x\n---\n", 2, "key: value"),
    ("---\na: 1\nA: 2\n---\n", 3, "twice"),
    ("# SYSTEM\n```\n# USER\n", 2, "fence"),
    ("# ASSISTANT\na\n", 1, "expected '# USER'"),
    ("# USER\nq\n# USER\nq\n# ASSISTANT\na\n", 3, "expected '# ASSISTANT'"),
    ("# USER\nq\n# ASSISTANT\na\n# USER\nq2\n", 5, "no '# ASSISTANT'"),
    ("# USER\nq\n# ASSISTANT\na\n# SYSTEM\ns\n", 5, "first section"),
    ("# SYSTEM\na\n# SYSTEM\nb\n", 3, "first section"),
    ("# SYSTEM\n\n\n# USER\nq\n# ASSISTANT\na\n", 1, "empty"),
    ("---\ndescription: x\nmodel: gpt 4o\n---\n", 3, "'model' must be a model name"),
    ("---\n# no model yet\nModel: ''\n---\n", 3, "'model' must be a model name"),
    ("---\nmodel: " + "m" * 201 + "\n---\n", 2, "'model' must be a model name"),
])
def test_malformed_files_are_reported_with_their_line(text, line, words):
    with pytest.raises(RoleFileError) as caught:
        parse_role("bad", text)
    assert caught.value.line == line
    assert words in caught.value.message


def test_invalid_utf8_reports_the_line_of_the_bad_byte():
    with pytest.raises(RoleFileError) as caught:
        parse_role("bad", b"# SYSTEM\nok\n\xff\xfe\n")
    assert caught.value.line == 3 and "UTF-8" in caught.value.message


def test_oversized_file_is_refused():
    with pytest.raises(RoleFileError, match="bytes"):
        parse_role("big", b"# SYSTEM\n" + b"x" * roles.MAX_ROLE_BYTES)


# --- substitution --------------------------------------------------------------------------

def test_os_and_date_are_substituted():
    before = datetime.date.today().isoformat()
    role = parse_role("t", "# SYSTEM\nOS=${OS} $OS on ${DATE}\n")
    content = role.render()[0]["content"]
    after = datetime.date.today().isoformat()
    os_value = roles.os_name()
    assert content in {f"OS={os_value} {os_value} on {day}" for day in (before, after)}


def test_unknown_variables_stray_dollars_and_double_dollar():
    role = parse_role("t", "# SYSTEM\n${NOPE} $ cost $5 $$HOME ${ OS } $nope\n")
    assert role.render()[0]["content"] == "${NOPE} $ cost $5 $HOME ${ OS } $nope"


@pytest.mark.parametrize(("system", "shown"), [
    ("Darwin", "macOS"), ("Linux", "Linux"), ("Windows", "Windows"), ("FreeBSD", "FreeBSD"),
])
def test_os_name_is_the_familiar_one(monkeypatch, system, shown):
    monkeypatch.setattr(roles.platform, "system", lambda: system)
    assert parse_role("t", "# SYSTEM\n${OS}\n").render()[0]["content"] == shown


def test_date_is_computed_at_each_render(monkeypatch):
    role = parse_role("t", "# SYSTEM\n${DATE}\n")
    monkeypatch.setattr(roles, "_today", lambda: datetime.date(2024, 2, 29))
    assert role.render()[0]["content"] == "2024-02-29"
    monkeypatch.setattr(roles, "_today", lambda: datetime.date(2024, 3, 1))
    assert role.render()[0]["content"] == "2024-03-01"


def test_variable_precedence_builtin_then_registry_then_call(tmp_path):
    write(tmp_path, "v.md", "# SYSTEM\n${OS}|${TEAM}|${DATE}\n")
    registry = RoleRegistry(tmp_path, {"TEAM": "blue", "OS": "Plan 9"})
    role = registry.get("v")
    today = role.render()[0]["content"].split("|")[2]
    assert role.render()[0]["content"] == f"Plan 9|blue|{today}"
    assert role.render({"TEAM": "red", "DATE": "x"})[0]["content"] == "Plan 9|red|x"


def test_front_matter_is_not_substituted():
    role = parse_role("t", "---\ndescription: for ${OS}\n---\n# SYSTEM\nx\n")
    assert role.description == "for ${OS}"


# --- registry: loading, problems, names -------------------------------------------------------

def test_bad_files_are_reported_while_the_others_load(tmp_path):
    write(tmp_path, "good.md", SIMPLE)
    write(tmp_path, "bad.md", "# SYSTEM\nfine\n# FOO\n")
    (tmp_path / "latin1.md").write_bytes("# SYSTEM\ncaf\xe9\n".encode("latin-1"))
    registry = RoleRegistry(tmp_path)
    folder = tmp_path.name
    assert registry.problems == [
        f"{folder}/bad.md:3: unknown heading '# FOO' (expected # SYSTEM, # USER or # ASSISTANT)",
        f"{folder}/latin1.md:2: the file is not valid UTF-8",
    ]
    assert registry.get("good").description == "A test role"
    with pytest.raises(UnknownRole):
        registry.get("bad")


@pytest.mark.parametrize("name", [
    "../x", "..", ".", "%2e%2e", "..%2f", "..%2fetc%2fpasswd", "/etc/passwd", "a/b", "a\\b",
    "", "Cli", "cli.md", "-x", "_x", "cli\n", "x" * 65, " cli", "cl i", None, 7, ["cli"],
])
def test_bad_role_names_are_refused_as_bad_request(tmp_path, name):
    write(tmp_path, "cli.md", SIMPLE)
    registry = RoleRegistry(tmp_path)
    with pytest.raises(BadRequest) as caught:
        registry.get(name)
    assert caught.value.field == "role" and caught.value.status == 400


@pytest.mark.parametrize("name", ["a", "0", "a-b_c9", "x" * 64])
def test_valid_names_are_looked_up(tmp_path, name):
    write(tmp_path, f"{name}.md", SIMPLE)
    assert RoleRegistry(tmp_path).get(name).name == name


def test_names_are_never_paths(tmp_path):
    inner = tmp_path / "roles"
    inner.mkdir()
    write(tmp_path, "secret.md", SIMPLE)
    registry = RoleRegistry(inner)
    with pytest.raises(BadRequest):
        registry.get("../secret")
    with pytest.raises(UnknownRole):
        registry.get("secret")


def test_symlink_leaving_the_folder_is_refused(tmp_path):
    inner = tmp_path / "roles"
    inner.mkdir()
    outside = write(tmp_path, "outside.md", SIMPLE)
    (inner / "evil.md").symlink_to(outside)
    (inner / "passwd.md").symlink_to("/etc/passwd")
    registry = RoleRegistry(inner)
    with pytest.raises(UnknownRole):
        registry.get("evil")
    with pytest.raises(UnknownRole):
        registry.get("passwd")
    assert sum("outside the roles folder" in p for p in registry.problems) == 2


def test_symlink_to_a_file_inside_is_an_alias(tmp_path):
    write(tmp_path, "cli.md", SIMPLE)
    (tmp_path / "shell.md").symlink_to(tmp_path / "cli.md")
    (tmp_path / "dangling.md").symlink_to(tmp_path / "missing.md")
    registry = RoleRegistry(tmp_path)
    assert registry.get("shell").messages == registry.get("cli").messages
    assert [p for p in registry.problems if "dangling.md:1: cannot read" in p]


def test_file_names_that_are_not_role_names_are_reported_and_others_ignored(tmp_path):
    write(tmp_path, "Bad Name.md", SIMPLE)
    write(tmp_path, "notes.txt", "ignored")
    write(tmp_path, ".hidden.md", "ignored")
    (tmp_path / "dir.md").mkdir()
    registry = RoleRegistry(tmp_path)
    assert [item["name"] for item in registry.list()] == ["default"]
    assert len(registry.problems) == 2
    assert "Bad Name.md:1: the file name is not a valid role name" in registry.problems[0]
    assert "dir.md:1: not a regular file" in registry.problems[1]


def test_default_is_empty_without_a_file(tmp_path):
    role = RoleRegistry(tmp_path).get("default")
    assert role.render() == [] and role.examples == 0


def test_default_md_is_used_and_a_broken_one_falls_back_to_empty(tmp_path):
    write(tmp_path, "default.md", "oops\n", mtime=1_000)
    registry = RoleRegistry(tmp_path)
    assert registry.get("default").render() == []
    assert registry.problems == [f"{tmp_path.name}/default.md:1: text before the first "
                                 "'# SYSTEM', '# USER' or '# ASSISTANT' heading"]
    write(tmp_path, "default.md", SIMPLE, mtime=2_000)
    registry.refresh()
    assert registry.get("default").examples == 1 and registry.problems == []


def test_unknown_role_lists_the_known_names(tmp_path):
    write(tmp_path, "sql.md", SIMPLE)
    write(tmp_path, "cli.md", SIMPLE)
    with pytest.raises(UnknownRole) as caught:
        RoleRegistry(tmp_path).get("nope")
    assert caught.value.status == 404 and caught.value.field == "role"
    assert "known roles: cli, default, sql" in caught.value.message


def test_list_is_sorted_with_descriptions_and_example_counts(tmp_path):
    write(tmp_path, "zed.md", "---\ndescription: last\n---\n# USER\n1\n# ASSISTANT\n2\n"
                              "# USER\n3\n# ASSISTANT\n4\n")
    write(tmp_path, "alpha.md", "---\ndescription: first\n---\n# SYSTEM\nonly\n")
    listing = RoleRegistry(tmp_path).list()
    assert [item["name"] for item in listing] == ["alpha", "default", "zed"]
    assert listing[0] == {"name": "alpha", "description": "first", "examples": 0}
    assert listing[2] == {"name": "zed", "description": "last", "examples": 2}


def test_missing_folder_is_a_problem_then_picked_up_when_created(tmp_path):
    folder = tmp_path / "later"
    registry = RoleRegistry(folder)
    assert registry.get("default").render() == []
    assert "cannot list the roles folder" in registry.problems[0]
    folder.mkdir()
    write(folder, "cli.md", SIMPLE)
    registry.refresh()
    assert registry.problems == [] and registry.get("cli").examples == 1


# --- registry: reloading ----------------------------------------------------------------------

def test_edit_add_and_remove_are_seen_after_the_check_interval(tmp_path):
    clock = FakeClock()
    write(tmp_path, "one.md", "---\ndescription: v1\n---\n", mtime=1_000)
    registry = RoleRegistry(tmp_path, clock=clock, check_interval=1.0)
    write(tmp_path, "one.md", "---\ndescription: v2\n---\n", mtime=2_000)
    write(tmp_path, "two.md", SIMPLE)
    assert registry.get("one").description == "v1"  # within the interval: no disk access
    clock.now += 1.0
    assert registry.get("one").description == "v2"
    assert registry.get("two").examples == 1
    (tmp_path / "two.md").unlink()
    clock.now += 0.5
    assert registry.get("two").examples == 1
    clock.now += 0.5
    with pytest.raises(UnknownRole):
        registry.get("two")


def test_unchanged_files_are_not_parsed_again(tmp_path, monkeypatch):
    clock = FakeClock()
    write(tmp_path, "a.md", SIMPLE, mtime=1_000)
    write(tmp_path, "b.md", SIMPLE, mtime=1_000)
    registry = RoleRegistry(tmp_path, clock=clock)
    parsed: list[str] = []
    real_parse = roles.parse_role
    monkeypatch.setattr(roles, "parse_role", lambda name, data: parsed.append(name)
                        or real_parse(name, data))
    for _ in range(3):
        clock.now += 5
        registry.list()
    assert parsed == []
    write(tmp_path, "b.md", SIMPLE.replace("hello", "hey"), mtime=3_000)
    clock.now += 5
    assert registry.get("b").messages[-1] == ("assistant", "hey")
    assert parsed == ["b"]


@pytest.mark.parametrize("broken", [SIMPLE + "# USER\nunanswered\n", ""])
def test_a_file_that_breaks_later_keeps_its_last_good_version(tmp_path, broken):
    write(tmp_path, "r.md", SIMPLE, mtime=1_000)
    registry = RoleRegistry(tmp_path)
    write(tmp_path, "r.md", broken, mtime=2_000)  # a bad edit, or a save caught half-way
    registry.refresh()
    assert registry.get("r").examples == 1
    assert len(registry.problems) == 1
    assert registry.problems[0].startswith(f"{tmp_path.name}/r.md:")
    write(tmp_path, "r.md", SIMPLE.replace("hello", "fixed"), mtime=3_000)
    registry.refresh()
    assert registry.get("r").messages[-1] == ("assistant", "fixed") and registry.problems == []


def test_the_reported_line_of_a_later_break(tmp_path):
    write(tmp_path, "r.md", SIMPLE, mtime=1_000)
    registry = RoleRegistry(tmp_path)
    write(tmp_path, "r.md", SIMPLE + "# USER\nunanswered\n", mtime=2_000)
    registry.refresh()
    assert registry.problems == [f"{tmp_path.name}/r.md:12: the last '# USER' has no "
                                 "'# ASSISTANT' answer"]


def test_threads_reading_while_a_file_changes(tmp_path):
    write(tmp_path, "live.md", "---\ndescription: v0\n---\n# SYSTEM\nv0\n", mtime=1_000)
    registry = RoleRegistry(tmp_path, check_interval=0.001)
    stop = threading.Event()

    def reader() -> set[str]:
        seen = set()
        while not stop.is_set():
            seen.add(registry.get("live").render()[0]["content"])
            registry.list()
            time.sleep(0)  # yield the GIL, so eight busy readers do not starve the writer
        return seen

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(reader) for _ in range(8)]
        for version in range(1, 30):
            text = f"---\ndescription: v{version}\n---\n# SYSTEM\nv{version}\n"
            write(tmp_path, "live.tmp", text, mtime=1_000 + version)
            os.replace(tmp_path / "live.tmp", tmp_path / "live.md")  # how editors save
            registry.refresh()
        stop.set()
        seen = set().union(*(future.result(timeout=10) for future in futures))
    assert registry.get("live").description == "v29"
    assert seen and seen <= {f"v{n}" for n in range(30)}


# --- shipped roles ---------------------------------------------------------------------------

def test_shipped_roles_parse_cleanly_and_render_os():
    registry = RoleRegistry(SHIPPED)
    assert registry.problems == []
    listing = {item["name"]: item for item in registry.list()}
    assert {"cli", "ikun", "sql", "translator"} <= set(listing)
    for name in ("cli", "ikun", "sql", "translator"):
        assert listing[name]["description"]
        assert 1 <= listing[name]["examples"] <= 3
        rendered = registry.get(name).render()
        assert rendered[0]["role"] == "system"
        assert all("${" not in m["content"] for m in rendered)
    cli_system = registry.get("cli").render({"OS": "TestOS"})[0]["content"]
    assert "TestOS" in cli_system and "${OS}" not in cli_system


# --- message assembly ------------------------------------------------------------------------

def turns(*contents: str) -> list[dict[str, str]]:
    """Alternating user/assistant turns, ending with a user turn."""
    count = len(contents)
    return [{"role": "user" if (count - i) % 2 else "assistant", "content": c}
            for i, c in enumerate(contents)]


ROLE_MSGS = [{"role": "system", "content": "S" * 50}, {"role": "user", "content": "example"}]


def test_order_is_role_then_system_then_history():
    result = assemble_messages(ROLE_MSGS, turns("hi"), system="be brief", max_chars=100)
    assert result == [*ROLE_MSGS, {"role": "system", "content": "be brief"},
                      {"role": "user", "content": "hi"}]


def test_trimming_drops_the_oldest_and_keeps_the_newest():
    history = turns("1111", "2222", "3333", "4444", "5555")
    result = assemble_messages([], history, max_chars=12)
    assert [m["content"] for m in result] == ["3333", "4444", "5555"]


def test_leading_assistant_turn_is_dropped_after_trimming():
    history = turns("1111", "2222", "3333")  # user, assistant, user
    result = assemble_messages([], history, max_chars=8)
    assert result == [{"role": "user", "content": "3333"}]


def test_nothing_is_dropped_when_it_fits_even_a_leading_assistant_turn():
    history = [{"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "hi"}]
    assert assemble_messages([], history, max_chars=8) == history


def test_trimming_keeps_a_contiguous_suffix():
    history = turns("a", "b" * 100, "c")
    assert [m["content"] for m in assemble_messages([], history, max_chars=50)] == ["c"]


def test_role_messages_do_not_count_but_system_does():
    history = turns("aaaa", "bbbb", "cccc")
    # 10 - len("ss") leaves 8: "bbbb" + "cccc" fit, then the orphan assistant turn goes.
    result = assemble_messages(ROLE_MSGS, history, system="ss", max_chars=10)
    assert result == [*ROLE_MSGS, {"role": "system", "content": "ss"},
                      {"role": "user", "content": "cccc"}]


def test_newest_message_longer_than_the_limit_is_too_large():
    with pytest.raises(PayloadTooLarge) as caught:
        assemble_messages([], turns("x" * 11), max_chars=10)
    assert caught.value.field == "message" and "MAX_HISTORY_CHARS (10)" in caught.value.message


def test_system_plus_newest_over_the_limit_is_too_large_on_system():
    with pytest.raises(PayloadTooLarge) as caught:
        assemble_messages([], turns("x" * 8), system="yyy", max_chars=10)
    assert caught.value.field == "system" and caught.value.status == 413


def test_history_must_end_with_a_user_message():
    with pytest.raises(BadRequest):
        assemble_messages([], [{"role": "assistant", "content": "x"}], max_chars=10)
    with pytest.raises(BadRequest):
        assemble_messages([], [], max_chars=10)


def test_inputs_are_not_mutated():
    history = turns("1111", "2222", "3333")
    snapshot = [dict(m) for m in history]
    result = assemble_messages(ROLE_MSGS, history, max_chars=4)
    result[0]["content"] = "changed"
    assert history == snapshot and ROLE_MSGS[0]["content"] == "S" * 50


@given(st.lists(st.text(max_size=30), min_size=1, max_size=12), st.integers(30, 120))
def test_any_history_fits_and_ends_with_the_newest(contents, limit):
    history = turns(*contents)
    result = assemble_messages([], history, max_chars=limit)
    assert sum(len(m["content"]) for m in result) <= limit
    assert result[-1] == history[-1]
    assert result == history[len(history) - len(result):]
    if len(result) < len(history):
        assert result[0]["role"] == "user"
