"""The administration commands (`flask --app app users|keys|invites|budgets|usage ...`), run
through Flask's CLI runner against an app with a database of its own; and once for real, as
a person types it, through `flask --app app`."""

from __future__ import annotations

import os
import subprocess
import sys

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


def test_the_password_is_asked_twice_without_echo(app):
    code, out = run(app, "users", "add", "ann", stdin="correct horse 1\ncorrect horse 1\n")
    assert code == 0 and "correct horse" not in out


def test_keys_are_made_once_listed_without_the_key_and_revoked(app):
    run(app, "users", "add", "ann", "--password-stdin", stdin="correct horse battery\n")
    code, out = run(app, "keys", "create", "ann", "--name", "laptop", "--days", "30",
                    "--models", "gpt-4o-mini,gpt-4o")
    assert code == 0
    key = out.split(": ", 1)[1].split()[0]
    assert key.startswith("sk-gpx-")
    listed = run(app, "keys", "list", "ann")[1]
    assert "laptop" in listed and key not in listed and "gpt-4o-mini,gpt-4o" in listed
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
