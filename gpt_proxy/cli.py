"""Administration from the command line, as Flask projects do it (`flask --app app ...`):

    flask --app app users add|list|disable|enable|password|admin
    flask --app app keys create|list|revoke
    flask --app app invites create

They work on the database DATABASE_URL names, whatever AUTH is (accounts can be made before
AUTH=users turns them on). A password is asked without echo (twice), or read from standard
input with `--password-stdin` for scripts; it is never an argument, which `ps` and the shell's
history would show. A new key or invite code is printed once.
"""

from __future__ import annotations

import sys

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from .accounts import User, iso_time
from .errors import ProxyError

users_cli = AppGroup("users", help="Accounts (used with AUTH=users).")
keys_cli = AppGroup("keys", help="API keys.")
invites_cli = AppGroup("invites", help="Invite codes (REGISTRATION=invite).")


def register(app: Flask) -> None:
    for group in (users_cli, keys_cli, invites_cli):
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


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
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
    """List keys (a user's, or everybody's)."""
    for key in _accounts().list_keys(_user(username).id if username else None):
        state = "revoked" if key.revoked else "active"
        click.echo(f"{key.id}\tuser {key.user_id}\t{key.name}\t{key.hint}\t{state}\t"
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
