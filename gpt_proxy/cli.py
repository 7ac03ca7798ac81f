"""Administration from the command line, as Flask projects do it (`flask --app app ...`):

    flask --app app users add|list|disable|enable|password|admin
    flask --app app keys create|list|revoke
    flask --app app invites create
    flask --app app budgets set|list|delete|check
    flask --app app usage export

They work on the database DATABASE_URL names, whatever AUTH is (accounts can be made before
AUTH=users turns them on). A password is asked without echo (twice) on a terminal, or read
as one line from standard input with `--password-stdin`, or whenever standard input is not a
terminal (a script, `docker exec -i` without `-t`: asking would only print getpass' warning
and stop at the end of the input); it is never an argument, which `ps` and the shell's
history would show. A new key or invite code is printed once. Listings name users by their
usernames.
"""

from __future__ import annotations

import sys

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from .accounts import User, iso_time
from .budgets import PERIODS, UNITS, parse_limit
from .errors import ProxyError

users_cli = AppGroup("users", help="Accounts (used with AUTH=users).")
keys_cli = AppGroup("keys", help="API keys.")
invites_cli = AppGroup("invites", help="Invite codes (REGISTRATION=invite).")
budgets_cli = AppGroup("budgets", help="Budgets per key, user or the whole service.")
usage_cli = AppGroup("usage", help="The usage ledger.")


def register(app: Flask) -> None:
    for group in (users_cli, keys_cli, invites_cli, budgets_cli, usage_cli):
        app.cli.add_command(group)


def _accounts():
    return current_app.extensions["gpt_proxy"].accounts


def _fail(err: ProxyError) -> click.ClickException:
    return click.ClickException(err.message)


def _user(name: str) -> User:
    accounts = _accounts()
    user = accounts.get_user(int(name)) if name.isdigit() else None
    user = user or accounts.find_user(name)
    if user is None:
        raise click.ClickException(f"no user {name!r}")
    return user


NO_PASSWORD = ("no password on standard input: pipe it in, one line (printf '%s\\n' \"$PW\" | "
               "flask --app app users add NAME --password-stdin); in a container, pass standard "
               "input with -i (docker exec -i gpt_proxy flask --app app users add NAME "
               "--password-stdin), or use -it to be asked for it")


def _password(from_stdin: bool) -> str:
    """The new password: one line of standard input when asked to, or when there is no
    terminal to ask on; else asked twice without echo."""
    if from_stdin or not sys.stdin or not sys.stdin.isatty():
        line = sys.stdin.readline() if sys.stdin else ""
        if not line.strip("\r\n"):
            raise click.ClickException(NO_PASSWORD)
        return line.rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@users_cli.command("add")
@click.argument("username")
@click.option("--email", default=None, help="an e-mail address (optional)")
@click.option("--admin", is_flag=True, help="may use the admin routes")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
def users_add(username: str, email: str | None, admin: bool, password_stdin: bool) -> None:
    """Make an account."""
    try:
        user = _accounts().create_user(username, _password(password_stdin), email, admin=admin)
    except ProxyError as err:
        raise _fail(err) from None
    click.echo(f"user {user.id} {user.username}" + (" (admin)" if admin else ""))


@users_cli.command("list")
def users_list() -> None:
    """List the accounts."""
    for user in _accounts().list_users():
        flags = [flag for flag, on in (("admin", user.admin), ("disabled", user.disabled)) if on]
        click.echo(f"{user.id}\t{user.username}\t{user.email or '-'}\t"
                   f"{iso_time(user.created)}\t{','.join(flags) or '-'}")


@users_cli.command("disable")
@click.argument("username")
def users_disable(username: str) -> None:
    """Disable an account: its sessions end and its keys stop working."""
    user = _accounts().set_disabled(_user(username).id, True)
    click.echo(f"user {user.id} {user.username} disabled")


@users_cli.command("enable")
@click.argument("username")
def users_enable(username: str) -> None:
    """Enable a disabled account."""
    user = _accounts().set_disabled(_user(username).id, False)
    click.echo(f"user {user.id} {user.username} enabled")


@users_cli.command("admin")
@click.argument("username")
@click.option("--off", is_flag=True, help="take the admin right away")
def users_admin(username: str, off: bool) -> None:
    """Make an account an admin (or not, with --off)."""
    user = _accounts().set_admin(_user(username).id, not off)
    click.echo(f"user {user.id} {user.username} is {'an admin' if user.admin else 'no admin'}")


@users_cli.command("password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="read the password from standard input")
def users_password(username: str, password_stdin: bool) -> None:
    """Set a new password; every session of the account ends."""
    user = _user(username)
    try:
        _accounts().set_password(user.id, _password(password_stdin))
    except ProxyError as err:
        raise _fail(err) from None
    click.echo(f"user {user.id} {user.username}: password changed, sessions ended")


@keys_cli.command("create")
@click.argument("username")
@click.option("--name", default="key", help="what the key is for")
@click.option("--days", type=float, default=None, help="expires after this many days")
@click.option("--models", default=None, help="comma-separated models it may use")
def keys_create(username: str, name: str, days: float | None, models: str | None) -> None:
    """Make an API key for a user; it is printed once."""
    accounts = _accounts()
    chosen = tuple(m.strip() for m in models.split(",") if m.strip()) if models else None
    try:
        key, secret = accounts.create_key(
            _user(username).id, name, models=chosen or None,
            expires=accounts.clock() + days * 86400 if days else None)
    except ProxyError as err:
        raise _fail(err) from None
    click.echo(f"key {key.id} {key.name}: {secret}")
    click.echo("(shown only now: store it)", err=True)


@keys_cli.command("list")
@click.argument("username", required=False)
def keys_list(username: str | None) -> None:
    """List keys (a user's, or everybody's), each with its owner's username."""
    accounts = _accounts()
    names = {user.id: user.username for user in accounts.list_users()}
    for key in accounts.list_keys(_user(username).id if username else None):
        state = "revoked" if key.revoked else "active"
        owner = names.get(key.user_id, f"user {key.user_id}")
        click.echo(f"{key.id}\t{owner}\t{key.name}\t{key.hint}\t{state}\t"
                   f"last used {iso_time(key.last_used) or 'never'}\t"
                   f"models {','.join(key.models) if key.models else 'any'}")


@keys_cli.command("revoke")
@click.argument("key_id", type=int)
def keys_revoke(key_id: int) -> None:
    """Revoke a key (within a second on every instance)."""
    try:
        key = _accounts().revoke_key(key_id)
    except ProxyError as err:
        raise _fail(err) from None
    click.echo(f"key {key.id} {key.name} revoked")


@invites_cli.command("create")
@click.option("--days", type=float, default=7.0, help="valid for this many days")
def invites_create(days: float) -> None:
    """Make a single-use invite code."""
    try:
        code, expires = _accounts().create_invite(None, days)
    except ProxyError as err:
        raise _fail(err) from None
    click.echo(f"{code}\t(expires {iso_time(expires)})")


def _budgets():
    return current_app.extensions["gpt_proxy"].budgets


@budgets_cli.command("set")
@click.option("--service", "scope", flag_value="service", help="the whole service")
@click.option("--user", "user", default=None, help="a user (name or id)")
@click.option("--key", "key", type=int, default=None, help="an API key (its id)")
@click.option("--unit", type=click.Choice(UNITS), required=True,
              help="tokens, usd (the limit in dollars) or requests")
@click.option("--period", type=click.Choice(PERIODS), required=True,
              help="minute (rpm/tpm), day, month or total")
@click.option("--limit", required=True, help="tokens, requests, or dollars such as 5.00")
def budgets_set(scope: str | None, user: str | None, key: int | None, unit: str, period: str,
                limit: str) -> None:
    """Make a budget, or change its limit."""
    chosen = [name for name, given in (("service", scope), ("user", user), ("key", key))
              if given is not None]
    if len(chosen) != 1:
        raise click.ClickException("name one of --service, --user or --key")
    subject = 0
    if user is not None:
        subject = _user(user).id
    elif key is not None:
        if not any(k.id == key for k in _accounts().list_keys()):
            raise click.ClickException(f"no key with id {key}")
        subject = key
    try:
        budget = _budgets().set_budget(chosen[0], subject, unit, period,
                                       parse_limit(unit, limit))
    except ProxyError as err:
        raise _fail(err) from None
    click.echo(f"budget {budget.id}: {budget.describe()}")


@budgets_cli.command("list")
def budgets_list() -> None:
    """List the budgets with this period's spend."""
    budgets = _budgets()
    for item in budgets.standing(budgets.list_budgets()):
        click.echo(f"{item['id']}\t{item['scope']} {item['subject_id']}\t{item['unit']}/"
                   f"{item['period']}\tlimit {item['limit']}\tspent {item['spent']}\t"
                   f"reserved {item['reserved']}\tleft {item['left']}\t"
                   f"resets {item['resets_at'] or 'never'}")


@budgets_cli.command("delete")
@click.argument("budget_id", type=int)
def budgets_delete(budget_id: int) -> None:
    """Delete a budget (and its counters)."""
    try:
        _budgets().delete_budget(budget_id)
    except ProxyError as err:
        raise _fail(err) from None
    click.echo(f"budget {budget_id} deleted")


@budgets_cli.command("check")
def budgets_check() -> None:
    """Compare every counter with the ledger (exit status 1 when one differs)."""
    from .prices import dollars

    budgets = _budgets()
    drift = budgets.check()
    units = {budget.id: budget.unit for budget in budgets.list_budgets()}
    for d in drift:
        show = dollars if units.get(d.budget_id) == "usd" else str
        click.echo(f"budget {d.budget_id} ({d.kind}) window {d.window}: counter spent "
                   f"{show(d.spent)} reserved {show(d.reserved)}; ledger says spent "
                   f"{show(d.ledger_spent)} reserved {show(d.ledger_reserved)}")
    if drift:
        raise click.ClickException(f"{len(drift)} counter(s) differ from the ledger")
    click.echo("every counter agrees with the ledger")


@usage_cli.command("export")
@click.option("--user", default=None, help="one user's rows (name or id)")
@click.option("--since", default=None, help="from this date (YYYY-MM-DD, UTC)")
def usage_export(user: str | None, since: str | None) -> None:
    """The ledger as CSV on standard output."""
    import csv
    import datetime as dt

    budgets = _budgets()
    start = None
    if since:
        try:
            start = dt.datetime.fromisoformat(since).replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            raise click.ClickException("--since must be a date such as 2026-11-30") from None
    writer = csv.writer(sys.stdout)
    writer.writerow(budgets.LEDGER_COLUMNS)
    for row in budgets.rows(user_id=_user(user).id if user else None, since=start):
        writer.writerow([row[name] for name in budgets.LEDGER_COLUMNS])
