"""The web terminal's own roles (`gpt diy`) and its hint line, in Debian's Chromium through
Playwright, against the real app under gunicorn and the fake upstream (see test_browser.py).

An own role is made through the prompts as a person would: the command, then the definition
at the question the terminal asks. Waiting is Playwright's, never a sleep.
"""

from __future__ import annotations

import pytest

from gpt_proxy.pipeline.roles import MAX_ROLE_BYTES, parse_role

from .browser_helpers import expect
from .conftest import serve
from .fake_upstream import stream_scenario

pytestmark = pytest.mark.browser
pytest_plugins = ["tests.browser_fixtures"]  # the chromium, open_terminal and term fixtures

POEM = "You are a poet.\nAnswer every message with one haiku, nothing else."


def system_and_turns(record) -> list[dict]:
    return record.json["messages"]


# --- making a role and using it ---------------------------------------------------------------

def test_a_role_made_through_the_prompts_survives_a_reload_and_is_sent_as_the_system_message(
        term, upstream):
    page = term.page
    term.type_command('gpt diy -k poet -n "Haiku poet" -d "Answers in haiku"')
    # The terminal asks for the definition: the prompt says so and the hint line explains keys.
    expect()(term.prompt_role).to_have_text("poet definition")
    expect()(term.input).to_be_focused()
    expect()(term.hint).to_contain_text("Enter saves")
    page.keyboard.type("You are a poet.")
    page.keyboard.press("Shift+Enter")  # a second line, not the end of the answer
    page.keyboard.type("Answer every message with one haiku, nothing else.")
    expect()(term.hint).to_contain_text(f"{len(POEM)} of at most")
    page.keyboard.press("Enter")
    expect()(term.last(".ok")).to_contain_text("made your role poet")
    expect()(term.prompt_role).to_have_text("default")

    page.reload()
    page.wait_for_selector("html[data-ready='true']")
    term.type_command("gpt role")
    # Listed apart from the server's roles, and marked as the user's own.
    expect()(term.last(".own-heading")).to_contain_text("Your own roles")
    expect()(term.last(".role-list.own-roles dt")).to_have_text("poet")
    expect()(term.last(".role-list.own-roles dd")).to_have_text("Haiku poet: Answers in haiku")
    server_roles = term.output.locator(".role-list:not(.own-roles) dt").all_inner_texts()
    assert "ikun" in server_roles and "poet" not in server_roles

    upstream.push(stream_scenario(["Waves fold into foam"]), stream_scenario(["Silver on black"]))
    assert term.chat("gpt chat -r poet the sea") == "Waves fold into foam"
    # The definition went as the request's `system` message, with no server role.
    assert term.chat_bodies[-1]["system"] == POEM
    assert "role" not in term.chat_bodies[-1]
    assert system_and_turns(upstream.wait_for_request(1)) == [
        {"role": "system", "content": POEM}, {"role": "user", "content": "the sea"}]
    expect()(term.last(".reply .reply-meta")).to_contain_text("poet (own)")

    # As the default role it keeps a conversation of its own, like a server role.
    term.type_command("gpt role poet")
    expect()(term.prompt_role).to_have_text("poet")
    assert term.chat("gpt chat and the moon?") == "Silver on black"
    assert system_and_turns(upstream.wait_for_request(2)) == [
        {"role": "system", "content": POEM}, {"role": "user", "content": "the sea"},
        {"role": "assistant", "content": "Waves fold into foam"},
        {"role": "user", "content": "and the moon?"}]
    term.type_command("gpt history")
    expect()(term.output.locator(".turn")).to_have_count(4)
    term.type_command("gpt history -r ikun")
    expect()(term.last(".dim")).to_contain_text("role ikun has no conversation yet")
    assert term.console_errors == []


def test_a_keyword_taken_by_a_server_role_or_an_own_role_is_refused(term, upstream):
    term.make_role("mine", "Be mine.")
    for line, message in [("gpt diy -k ikun -n Fan -d 'A fan'", '"ikun" is a role on the server'),
                          ("gpt diy -k default -n Plain -d 'None'", '"default" is a role on the server'),
                          ("gpt diy -k mine -n Again -d 'Twice'", 'you already have a role "mine"')]:
        term.type_command(line)
        expect()(term.last(".error .error-line")).to_contain_text(message)
        expect()(term.last(".error .hint-line")).to_contain_text("another")
        expect()(term.prompt_role).to_have_text("default")  # no definition was asked for
    term.type_command("gpt diy --show mine")
    expect()(term.last(".definition")).to_have_text("Be mine.")  # the first one is untouched
    assert upstream.records == []


@pytest.fixture(scope="module")
def small_limit_server(fake_upstream, tmp_path_factory):
    """gunicorn whose MAX_SYSTEM_CHARS is 300, so the page's limit can only come from it."""
    with serve(fake_upstream, tmp_path_factory.mktemp("gunicorn-small"),
               MAX_SYSTEM_CHARS="300") as server:
        yield server


def test_a_definition_longer_than_the_server_accepts_is_refused_with_the_servers_limit(
        open_terminal, small_limit_server, upstream):
    term = open_terminal(url=small_limit_server.url)
    term.type_command("gpt diy -k tiny -n Tiny -d 'Short and sweet'")
    expect()(term.prompt_role).to_have_text("tiny definition")
    expect()(term.hint).to_contain_text("of at most 300 characters")
    term.input.fill("x" * 301)
    expect()(term.hint).to_have_class("usage-hint warn")
    term.input.press("Enter")
    error = term.last(".error")
    expect()(error.locator(".error-line")).to_contain_text(
        "the definition is 301 characters long; this server accepts at most 300")
    # Still asking, with the refused text kept to shorten.
    expect()(term.prompt_role).to_have_text("tiny definition")
    expect()(term.input).to_have_value("x" * 301)

    # Characters as the server counts them: 100 emoji and 200 letters are 300, not 400.
    definition = "🏀" * 100 + "a" * 200
    term.input.fill(definition)
    term.input.press("Enter")
    expect()(term.last(".ok")).to_contain_text("made your role tiny")
    upstream.push(stream_scenario(["ok"]))
    assert term.chat("gpt chat -r tiny hi") == "ok"  # and the server takes it
    assert system_and_turns(upstream.wait_for_request(1))[0] == {"role": "system",
                                                                  "content": definition}


def test_ctrl_c_cancels_the_definition_and_keeps_nothing(term):
    term.type_command("gpt diy -k draft -n Draft -d 'Not yet'")
    expect()(term.prompt_role).to_have_text("draft definition")
    term.page.keyboard.type("half a thought")
    term.input.press("Control+c")
    expect()(term.last(".echo")).to_have_text("draft definition ❯ half a thought^C")
    expect()(term.last(".dim")).to_contain_text("cancelled: no role draft was made")
    expect()(term.prompt_role).to_have_text("default")
    expect()(term.input).to_have_value("")
    term.type_command("gpt diy --list")
    expect()(term.last(".dim")).to_contain_text("make one")
    # The answer is not a command: the command history does not hold it.
    term.input.press("ArrowUp")
    term.input.press("ArrowUp")
    expect()(term.input).to_have_value("gpt diy -k draft -n Draft -d 'Not yet'")


def test_list_show_and_delete_and_a_deleted_role_is_gone_with_its_conversation(term, upstream):
    term.make_role("poet", POEM, name="Haiku poet", description="Answers in haiku")
    term.make_role("chef", "You are a chef.\nGive one recipe.", name="Chef",
                   description="Cooks")
    term.type_command("gpt role poet")
    term.type_command("gpt diy --list")
    expect()(term.last(".own-roles").locator("dt")).to_have_text(["poet *", "chef"])
    term.type_command("gpt diy --show chef")
    expect()(term.last(".heading")).to_have_text("chef: Chef")
    expect()(term.last(".definition")).to_have_text("You are a chef.\nGive one recipe.")

    upstream.push(stream_scenario(["Soup."]))
    term.chat("gpt chat -r chef dinner?")
    term.type_command("gpt diy --delete poet")
    expect()(term.output.locator(".ok").nth(-2)).to_have_text("deleted your role poet")
    expect()(term.last(".ok")).to_have_text("default role: default")  # it was the default
    expect()(term.prompt_role).to_have_text("default")
    term.type_command("gpt diy --delete chef")
    expect()(term.last(".ok")).to_have_text(
        "deleted your role chef and its conversation (2 messages)")
    term.type_command("gpt diy --list")
    expect()(term.last(".dim")).to_contain_text("make one")

    # A deleted keyword is just a name the server does not know.
    term.type_command("gpt chat -r poet hello")
    expect()(term.last(".error .error-line")).to_contain_text("HTTP 404")
    term.wait_idle()
    # Made again, it starts afresh.
    term.make_role("chef", "Another chef.")
    term.type_command("gpt history -r chef")
    expect()(term.last(".dim")).to_contain_text("role chef has no conversation yet")
    assert len(upstream.records) == 1
    assert term.errors_except("404") == []


def test_edit_brings_the_definition_back_to_the_prompt_and_keeps_place_and_conversation(
        term, upstream):
    term.make_role("poet", POEM, name="Haiku poet", description="Answers in haiku")
    term.make_role("chef", "You are a chef.", name="Chef", description="Cooks")
    upstream.push(stream_scenario(["Waves fold into foam"]), stream_scenario(["Moon on the sea"]))
    assert term.chat("gpt chat -r poet the sea") == "Waves fold into foam"

    term.type_command('gpt diy --edit poet -n "Sonnet poet"')
    expect()(term.prompt_role).to_have_text("poet definition")
    expect()(term.input).to_have_value(POEM)  # the definition as it is, to change
    expect()(term.hint).to_contain_text(f"{len(POEM)} of at most")
    term.input.fill("You are a poet.\nAnswer with fourteen lines.")
    term.input.press("Enter")
    expect()(term.last(".ok")).to_contain_text(
        "changed your role poet: its name, definition (its conversation is kept")
    expect()(term.prompt_role).to_have_text("default")

    term.type_command("gpt diy --show poet")
    expect()(term.last(".heading")).to_have_text("poet: Sonnet poet")
    expect()(term.last(".definition")).to_have_text("You are a poet.\nAnswer with fourteen lines.")
    term.type_command("gpt diy --list")  # it keeps its place: the oldest first
    expect()(term.last(".own-roles").locator("dt")).to_have_text(["poet", "chef"])
    expect()(term.last(".own-roles").locator("dd").first).to_have_text(
        "Sonnet poet: Answers in haiku")

    # The next message goes with the new definition and the conversation so far.
    assert term.chat("gpt chat -r poet and the moon?") == "Moon on the sea"
    assert system_and_turns(upstream.wait_for_request(2)) == [
        {"role": "system", "content": "You are a poet.\nAnswer with fourteen lines."},
        {"role": "user", "content": "the sea"},
        {"role": "assistant", "content": "Waves fold into foam"},
        {"role": "user", "content": "and the moon?"}]
    assert term.console_errors == []


def test_edit_cancelled_or_refused_leaves_the_role_as_it_was(open_terminal, small_limit_server):
    term = open_terminal(url=small_limit_server.url)
    term.make_role("mine", "Be mine.", name="Mine", description="Mine alone")
    term.type_command("gpt diy --edit mine -d 'Not saved'")
    expect()(term.input).to_have_value("Be mine.")
    term.input.fill("y" * 301)  # over this server's MAX_SYSTEM_CHARS
    term.input.press("Enter")
    expect()(term.last(".error .error-line")).to_contain_text(
        "the definition is 301 characters long; this server accepts at most 300")
    expect()(term.input).to_have_value("y" * 301)  # nothing typed is lost
    term.input.press("Control+c")
    expect()(term.last(".dim")).to_contain_text("cancelled: your role mine is as it was")
    term.type_command("gpt diy --show mine")
    expect()(term.last(".definition")).to_have_text("Be mine.")
    term.type_command("gpt diy --list")  # nor its description, given with the cancelled edit
    expect()(term.last(".own-roles").locator("dd")).to_have_text(["Mine: Mine alone"])

    for line, message in [("gpt diy --edit nobody", 'you have no role "nobody"'),
                          ("gpt diy --edit mine -k other", "-k is for making a new one"),
                          ("gpt diy --edit mine --delete mine", "one thing at a time"),
                          ("gpt diy --edit mine -n '  '", "the name is empty")]:
        term.type_command(line)
        expect()(term.last(".error .error-line")).to_contain_text(message)
        expect()(term.prompt_role).to_have_text("default")  # no definition was asked for


# --- exporting ----------------------------------------------------------------------------------

def exported(term, keyword: str) -> str:
    term.type_command(f"gpt diy --export {keyword}")
    block = term.last("pre.role-file")
    expect()(block).to_be_visible()
    return block.text_content()


def test_an_export_is_a_role_file_that_the_servers_parser_reads_as_the_same_system_message(term):
    definition = ("You price things in $, like $5 or ${OS} or $$ (all literally).\n\n"
                  "## Rules\n- quote 'single' and \"double\"\n#hashtags are fine\n"
                  "```markdown\n# USER\nthis heading is inside a fence\n```\nThe end.")
    term.make_role("pricer", definition, name='"Quoted" name', description="Costs $5: cheap")
    text = exported(term, "pricer")
    assert term.output.locator(".note").count() == 0  # nothing had to change
    role = parse_role("pricer", text.encode())
    assert role.description == "Costs $5: cheap"
    assert role.meta["name"] == '"Quoted" name'
    assert [kind for kind, _ in role.messages] == ["system"]
    # Rendered by the server (which substitutes ${OS}), it is the definition as typed.
    assert role.render() == [{"role": "system", "content": definition}]
    expect()(term.last(".dim")).to_contain_text("roles/pricer.md")


def test_an_export_demotes_level_one_headings_and_closes_an_open_fence_and_says_so(term):
    definition = "# Rules\nBe brief.\n```\nunclosed code"
    term.make_role("rules", definition)
    text = exported(term, "rules")
    notes = term.output.locator(".note").all_inner_texts()
    assert len(notes) == 2 and '"# Rules"' in notes[0] and "code fence" in notes[1], notes
    role = parse_role("rules", text)  # loads, where the definition as typed would not
    assert role.render() == [{"role": "system",
                              "content": "## Rules\nBe brief.\n```\nunclosed code\n```"}]


@pytest.fixture(scope="module")
def large_limit_server(fake_upstream, tmp_path_factory):
    """gunicorn whose MAX_SYSTEM_CHARS admits definitions larger than a role file may be."""
    with serve(fake_upstream, tmp_path_factory.mktemp("gunicorn-large"),
               MAX_SYSTEM_CHARS="400000", MAX_HISTORY_CHARS="500000",
               MAX_BODY_BYTES="4000000") as server:
        yield server


def test_an_export_larger_than_the_server_loads_says_so(open_terminal, large_limit_server):
    term = open_terminal(url=large_limit_server.url)
    definition = "é" * 140_000  # 140,000 characters the server accepts, 280,000 bytes in UTF-8
    term.make_role("long", definition)
    text = exported(term, "long")
    size = len(text.encode("utf-8"))
    assert size > MAX_ROLE_BYTES
    expect()(term.last(".note")).to_have_text(
        f"note: this file is {size} bytes and the server loads role files of at most "
        f"{MAX_ROLE_BYTES}: as it is, the server would refuse it (shorten the definition, or "
        "keep the role in the browser)")
    term.make_role("short", "é" * 1000)
    exported(term, "short")
    expect()(term.output.locator(".note")).to_have_count(1)  # a file that fits has no note


@pytest.fixture(scope="module")
def role_model_server(fake_upstream, tmp_path_factory):
    """gunicorn whose roles folder holds a role that names its own model."""
    roles = tmp_path_factory.mktemp("roles-with-model")
    (roles / "cheap.md").write_text("---\ndescription: Short answers\nmodel: cheap-model\n---\n"
                                    "# SYSTEM\nAnswer in five words.\n")
    with serve(fake_upstream, tmp_path_factory.mktemp("gunicorn-role-model"),
               ROLES_DIR=str(roles)) as server:
        yield server


def test_a_roles_own_model_is_listed_and_asked_unless_the_user_names_one(
        open_terminal, role_model_server, upstream):
    term = open_terminal(url=role_model_server.url)
    term.type_command("gpt role")
    listed = term.last(".role-list")
    expect()(listed.locator("dt:text-is('cheap') + dd")).to_have_text(
        "Short answers · model: cheap-model")
    upstream.push(stream_scenario(["Five words, no more."]), stream_scenario(["Fine."]))
    assert term.chat("gpt chat -r cheap hi") == "Five words, no more."
    assert upstream.wait_for_request(1).json["model"] == "cheap-model"
    term.type_command("gpt model fake-model")  # the user's choice wins
    assert term.chat("gpt chat -r cheap again") == "Fine."
    assert upstream.wait_for_request(2).json["model"] == "fake-model"


# --- completion and untrusted text --------------------------------------------------------------

def test_tab_completes_own_roles_and_the_diy_options(term):
    term.make_role("poet", POEM)
    # (what is typed first, or None: Tab again on what the last Tab left) -> after Tab
    for typed, completed in [("gpt chat -r po", "gpt chat -r poet "),
                             ("gpt role p", "gpt role poet "),
                             ("gpt di", "gpt diy "),
                             ("gpt diy --exp", "gpt diy --export "),
                             (None, "gpt diy --export poet "),
                             ("gpt diy --ed", "gpt diy --edit "),
                             (None, "gpt diy --edit poet ")]:
        if typed is not None:
            term.input.fill(typed)
        term.input.press("Tab")
        expect()(term.input).to_have_value(completed)


def test_html_in_a_roles_name_description_and_definition_is_shown_as_text(term, upstream):
    name = '<img src=x onerror="window.__xss=1">'
    description = "<b>bold</b><script>window.__xss=2</script>"
    definition = '<svg onload="window.__xss=3"></svg>\n<script>window.__xss=4</script>'
    term.make_role("evil", definition, name=name, description=description)
    upstream.push(stream_scenario(["fine"]))
    for line in ("gpt diy --list", "gpt role", "gpt diy --show evil", "gpt diy --export evil",
                 "gpt role evil"):
        term.type_command(line)
    term.chat("gpt chat hi")
    term.type_command("gpt history")
    expect()(term.output.locator(".turn")).to_have_count(2)
    output = term.output
    assert term.page.evaluate("() => window.__xss") is None
    for selector in ("img", "script", "svg", "b", "[onerror]", "[onload]"):
        assert output.locator(selector).count() == 0, selector
    expect()(term.last(".own-roles dd")).to_have_text(f"{name}: {description}")
    expect()(term.last(".definition")).to_have_text(definition)
    expect()(term.last("pre.role-file")).to_contain_text(name)
    assert system_and_turns(upstream.wait_for_request(1))[0]["content"] == definition
    assert not any(url.endswith("/x") for url in term.requests), term.requests
    assert term.console_errors == []


# --- the hint line -----------------------------------------------------------------------------

def help_heading(term, command: str) -> str:
    term.type_command(f"help {command}")
    return term.last(".heading").inner_text()


def test_the_hint_line_shows_the_usage_of_the_command_being_typed(term):
    usage = {name: help_heading(term, name) for name in ("gpt", "gpt chat", "gpt diy", "help")}
    assert usage["gpt"].startswith("gpt <chat | image | role | diy")
    assert usage["gpt chat"].startswith("gpt chat [-r role]")
    assert usage["gpt diy"].startswith("gpt diy -k <keyword> -n <name> -d <description>")
    hint_usage = term.hint.locator(".hint-usage")
    hint_about = term.hint.locator(".hint-about")
    expect()(term.hint).to_be_hidden()  # an empty line

    term.page.keyboard.type("gpt")
    expect()(hint_usage).to_have_text(usage["gpt"])
    term.page.keyboard.type(" ch")  # a sub-command being typed
    expect()(hint_usage).to_have_text(usage["gpt chat"])
    expect()(hint_about).to_contain_text("Ask the model")
    term.page.keyboard.type("at -r ")  # the option whose value is being typed
    expect()(hint_about).to_contain_text("-r, --role <name>")
    term.page.keyboard.type("poet hello -r")  # options have ended: this is the message
    expect()(hint_about).to_contain_text("Ask the model")

    term.input.fill("gpt diy")
    expect()(hint_usage).to_have_text(usage["gpt diy"])
    term.input.fill("gpt diy --show ")
    expect()(hint_about).to_contain_text("--show <keyword>")
    term.input.fill("gpt diy --edit poet -d ")  # the edit's own options explain themselves
    expect()(hint_about).to_contain_text("-d, --description <text>")
    term.input.fill("gpt diy --edit ")
    expect()(hint_about).to_contain_text("--edit <keyword>: change it")
    term.input.fill("he")
    expect()(hint_usage).to_have_text(usage["help"])
    for nothing in ("foo", "foo bar", "chat hi", "   "):
        term.input.fill(nothing)
        expect()(term.hint).to_be_hidden()
    term.input.fill("gpt diy")
    expect()(term.hint).to_be_visible()
    term.input.press("Enter")  # the line is gone, and so is its hint
    expect()(term.hint).to_be_hidden()


def test_typing_200_characters_stays_responsive_and_asks_the_network_nothing(term):
    """What keeps typing fast, checked without a clock (the milliseconds are printed by
    `python -m bench.typing`): every key lands in order, no key asks the network anything, and
    the hint line is rewritten only when the hint changes, not once per key."""
    page = term.page
    page.evaluate("""() => {
        window.__inputs = 0;
        window.__hintWrites = 0;
        document.addEventListener('input', () => { window.__inputs += 1; });
        new MutationObserver((records) => { window.__hintWrites += records.length; })
            .observe(document.getElementById('hint'),
                     { subtree: true, childList: true, characterData: true, attributes: true });
    }""")
    requests_before = len(term.requests)
    line = "gpt chat -r ikun " + " ".join(["tell me about layups"] * 10)
    line = line[:200]
    assert len(line) == 200
    page.keyboard.type(line)
    expect()(term.input).to_have_value(line)  # every character landed, in order
    expect()(term.hint.locator(".hint-usage")).to_contain_text("gpt chat [-r role]")
    expect()(term.hint.locator(".hint-about")).to_contain_text("Ask the model")
    assert len(term.requests) == requests_before  # no request per keystroke (or at all)
    assert page.evaluate("() => window.__inputs") == 200
    # The hint changes a handful of times along this line ('g', 'gpt', 'gpt chat', '-r ...',
    # the question); a rewrite per key would be hundreds of DOM changes.
    writes = page.evaluate("() => window.__hintWrites")
    assert 0 < writes <= 40, writes
