"""The administration commands (`flask --app app users|keys|invites|budgets|usage ...`), run
through Flask's CLI runner against an app with a database of its own; and once for real, as
a person types it, through `flask --app app`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, make_config


@pytest.fixture()
def app(tmp_path):
    from gpt_proxy import create_app

    return create_app(make_config(database_url=f"sqlite:///{tmp_path}/gpt_proxy.db",
                                  auth="users"))


def run(app, *args: str, stdin: str | None = None):
    result = app.test_cli_runner().invoke(args=list(args), input=stdin)
    return result.exit_code, result.output


def test_users_are_added_listed_disabled_and_given_a_new_password(app):
    code, out = run(app, "users", "add", "ann", "--email", "ann@example.com", "--admin",
                    "--password-stdin", stdin="correct horse battery\n")
    assert code == 0 and out.startswith("user 1 ann (admin)")
    code, out = run(app, "users", "add", "ann", "--password-stdin", stdin="another one!\n")
    assert code != 0 and "taken" in out
    code, out = run(app, "users", "add", "bob", "--password-stdin", stdin="short\n")
    assert code != 0 and "at least 8" in out
    assert "ann\tann@example.com" in run(app, "users", "list")[1]
    assert run(app, "users", "disable", "ann")[1].strip() == "user 1 ann disabled"
    assert "disabled" in run(app, "users", "list")[1]
    assert run(app, "users", "enable", "1")[1].strip() == "user 1 ann enabled"
    code, out = run(app, "users", "password", "ann", "--password-stdin",
                    stdin="a new password\n")
    assert code == 0 and "sessions ended" in out
    accounts = app.extensions["gpt_proxy"].accounts
    assert accounts.authenticate("ann", "a new password") is not None
    assert run(app, "users", "disable", "nobody")[0] != 0


def test_without_a_terminal_the_password_is_one_line_of_standard_input(app):
    code, out = run(app, "users", "add", "ann", stdin="correct horse 1\n")
    assert code == 0 and "correct horse" not in out
    assert app.extensions["gpt_proxy"].accounts.authenticate("ann", "correct horse 1")
    code, out = run(app, "users", "add", "bob", stdin="")
    assert code == 1 and "no password on standard input" in out and "docker exec -i" in out


def test_keys_are_made_once_listed_without_the_key_and_revoked(app):
    run(app, "users", "add", "ann", "--password-stdin", stdin="correct horse battery\n")
    code, out = run(app, "keys", "create", "ann", "--name", "laptop", "--days", "30",
                    "--models", "gpt-4o-mini,gpt-4o")
    assert code == 0
    key = out.split(": ", 1)[1].split()[0]
    assert key.startswith("sk-gpx-")
    listed = run(app, "keys", "list", "ann")[1]
    assert "laptop" in listed and key not in listed and "gpt-4o-mini,gpt-4o" in listed
    run(app, "users", "add", "bob", "--password-stdin", stdin="staple paper clip\n")
    run(app, "keys", "create", "bob", "--name", "ci")
    everybody = [line.split("\t")[:3] for line in run(app, "keys", "list")[1].splitlines()]
    assert everybody == [["1", "ann", "laptop"], ["2", "bob", "ci"]]  # names, not "user 1"
    assert run(app, "keys", "revoke", "1")[1].strip() == "key 1 laptop revoked"
    assert app.extensions["gpt_proxy"].accounts.key(key) is None
    assert "already revoked" in run(app, "keys", "revoke", "1")[1]


def test_invites_and_budgets(app):
    code, out = run(app, "invites", "create", "--days", "2")
    assert code == 0 and out.startswith("inv-")
    run(app, "users", "add", "ann", "--password-stdin", stdin="correct horse battery\n")
    code, out = run(app, "budgets", "set", "--user", "ann", "--unit", "usd", "--period",
                    "month", "--limit", "5.00")
    assert code == 0 and "your account's monthly usd budget ($5.000000)" in out
    code, out = run(app, "budgets", "set", "--service", "--key", "1", "--unit", "tokens",
                    "--period", "day", "--limit", "5")
    assert code != 0 and "one of" in out
    listed = run(app, "budgets", "list")[1]
    assert "user 1\tusd/month\tlimit 5.000000" in listed and "resets" in listed
    assert run(app, "budgets", "delete", "1")[0] == 0
    assert run(app, "budgets", "delete", "1")[0] != 0
    code, out = run(app, "usage", "export")
    assert code == 0 and out.startswith("id,request_id,created")


def test_the_commands_run_as_a_person_types_them(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GPT_"))}
    env.update(DOTENV_FILE=os.devnull, DATABASE_URL=f"sqlite:///{tmp_path}/gpt_proxy.db",
               CONVERSATION_STORE=f"sqlite:///{tmp_path}/c.db")
    done = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "users", "add",
                           "ann", "--password-stdin"], input="correct horse battery\n",
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "user 1 ann"
    assert "correct horse" not in done.stdout + done.stderr


def flask_env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "GPT_"))}
    env.update(DOTENV_FILE=os.devnull, DATABASE_URL=f"sqlite:///{tmp_path}/gpt_proxy.db",
               CONVERSATION_STORE=f"sqlite:///{tmp_path}/c.db")
    return env


def flask_cli(tmp_path, *args: str, stdin: str) -> subprocess.CompletedProcess:
    """`flask --app app ...` as `docker exec -i gpt_proxy ...` runs it: standard input a pipe,
    no terminal at all (a session of its own: no /dev/tty that getpass could open)."""
    return subprocess.run([sys.executable, "-m", "flask", "--app", "app", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, env=flask_env(tmp_path),
                          timeout=60, start_new_session=True)


@pytest.mark.parametrize("flag", [(), ("--password-stdin",)])
def test_in_a_container_without_a_terminal_a_piped_password_is_read(tmp_path, flag):
    """The trap: `podman exec gpt_proxy flask --app app users add ann` printed
    `GetPassWarning ... Password: Aborted!`. Without a terminal the password is the piped
    line, with or without --password-stdin; then `users password` changes it the same way."""
    done = flask_cli(tmp_path, "users", "add", "ann", *flag, stdin="correct horse battery\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "user 1 ann"
    for word in ("GetPassWarning", "Aborted", "Traceback", "correct horse"):
        assert word not in done.stdout + done.stderr, word
    done = flask_cli(tmp_path, "users", "password", "ann", *flag, stdin="a new password\n")
    assert done.returncode == 0 and "password changed" in done.stdout, done.stderr
    from gpt_proxy import create_app

    app = create_app(make_config(database_url=f"sqlite:///{tmp_path}/gpt_proxy.db"))
    assert app.extensions["gpt_proxy"].accounts.authenticate("ann", "a new password")


def test_without_a_terminal_and_nothing_piped_it_says_how_to_pass_the_password(tmp_path):
    """`docker exec` without -i: standard input is empty. One line saying what to do."""
    done = flask_cli(tmp_path, "users", "add", "ann", stdin="")
    assert done.returncode == 1
    assert "Error: no password on standard input" in done.stderr
    assert "docker exec -i gpt_proxy flask --app app users add NAME --password-stdin" in \
        done.stderr
    assert "Traceback" not in done.stderr and "GetPassWarning" not in done.stderr


def test_on_a_terminal_the_password_is_asked_twice_without_echo(tmp_path):
    """`docker exec -it ...` or `docker compose exec gpt-proxy-1 ...` (a terminal): asked,
    not echoed, confirmed. A pseudo-terminal is the command's controlling terminal."""
    import pty
    import select

    pid, terminal = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "flask", "--app", "app", "users",
                                   "add", "ann"], flask_env(tmp_path))
    seen = b""
    deadline = time.monotonic() + 60
    typed = 0
    while time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 1)
        if ready:
            try:
                chunk = os.read(terminal, 1024)
            except OSError:  # the child ended: its terminal is gone
                break
            if not chunk:
                break
            seen += chunk
        prompts = seen.count(b"Password") + seen.count(b"Repeat for confirmation")
        if prompts > typed and typed < 2:
            os.write(terminal, b"correct horse battery\n")
            typed += 1
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    text = seen.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "Repeat for confirmation" in text and "user 1 ann" in text
    assert "correct horse" not in text  # never echoed
