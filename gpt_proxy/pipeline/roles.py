"""Role templates: ``roles/<name>.md`` files rendered into the messages that open a chat.

A role is a system prompt plus a few example turns, written as markdown so it is easy to edit.
This module parses those files, keeps them in a registry that follows edits without a restart,
and puts a request's messages together. It knows nothing of HTTP.

File format (every rule below that is broken is reported as ``roles/<file>:<line>: <why>``,
and that file is skipped while the others load):

* UTF-8 (a leading byte-order mark is ignored), at most ``MAX_ROLE_BYTES``; empty or
  whitespace-only is an error. Line ends ``\\r\\n`` and ``\\r`` are read as ``\\n``.
* Optional front matter: when the first line is ``---``, the lines up to the next ``---`` are
  ``key: value`` pairs (blank and ``#`` lines skipped, the value trimmed and one pair of
  matching quotes removed). A missing closing ``---``, a line without ``:``, a key that is not
  an identifier or a key given twice is an error. ``description`` is used, and so is
  ``model``: the model this role asks the upstream for when a request names none (at most 200
  characters, no spaces or control characters); other keys are kept in ``Role.meta``. Front
  matter is never substituted.
* A section starts at a level-1 heading line: ``#``, a space or tab, the name, optional trailing
  whitespace, no indentation. ``SYSTEM``, ``USER`` and ``ASSISTANT`` are the names (any case);
  any other level-1 heading outside a code fence is an error, so a typo never becomes prompt
  text. ``## Sub`` headings, ``#!`` and ``#word`` lines are content.
* Code fences (up to three spaces, then three or more backticks or tildes) are followed as
  CommonMark does: inside one, ``# USER`` is content. A fence left open at the end of the file is
  an error, since it would silently swallow every heading after it.
* Non-blank text before the first heading (front matter apart) is an error.
* A section's text is kept exactly as written, inner blank lines included; only whitespace at
  its start and end is trimmed. An empty section is an error.
* Order: at most one ``SYSTEM``, and only as the first section; then ``USER`` and ``ASSISTANT``
  strictly alternate, starting with ``USER`` and ending with ``ASSISTANT``. Each pair is one
  example; the client's own message is the next user turn. Front matter with no sections is a
  valid role with no messages.

Variables: each render applies ``string.Template.safe_substitute`` to every section, so
``${OS}`` (or ``$OS``) is replaced, ``$$`` becomes ``$``, and an unknown ``${NAME}`` or a stray
``$`` stays as written. Built in, computed at every render: ``OS`` ("Linux", "macOS",
"Windows", ... from ``platform.system()``) and ``DATE`` (today, ISO 8601, server's local
date). The registry's ``variables`` override the built-ins, and ``render(variables)`` overrides
both.

Registry: every ``*.md`` file directly in the folder whose stem is a valid role name (other
names are reported; hidden and non-``.md`` files are ignored). A symlink is followed only when
its target is a regular file inside the folder (an alias); one that leaves the folder or dangles
is reported and skipped. A request's role name is checked against ``ROLE_NAME`` and then only
looked up in the loaded set: it is never used as a path. ``default`` always exists: it is
``default.md`` when that file loads, else a role with no messages. At most once per
``check_interval`` seconds an access lists the folder and stats each file (one ``lstat``, plus
a resolve for symlinks); only files whose device, inode, size or mtime changed are read again.
A file that fails to load at start is skipped; one that breaks later (a half-saved edit) keeps
serving its last good version, and is reported, until it is fixed or removed.

Assembly: see ``assemble_messages``. Role-template characters do not count against
``max_chars``: they are written by the operator and bounded by the file size. The ad-hoc
``system`` text comes from the client, so it counts and is never dropped.
"""

from __future__ import annotations

import codecs
import datetime
import logging
import os
import platform
import re
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from string import Template
from types import MappingProxyType

from ..base.errors import BadRequest, PayloadTooLarge, UnknownRole
from ..upstream.chunks import text_of

log = logging.getLogger(__name__)

ROLE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
DEFAULT_ROLE = "default"
MAX_ROLE_BYTES = 256 * 1024
SECTIONS = ("system", "user", "assistant")

_HEADING = re.compile(r"#(?:[ \t]+(.*?))?[ \t]*")
_FENCE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_META_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_MODEL = re.compile(r"[^\s\x00-\x1f\x7f]{1,200}")  # front matter `model`
_OS_NAMES = {"Darwin": "macOS", "Linux": "Linux", "Windows": "Windows"}


class RoleFileError(ValueError):
    """A role file breaks the format; ``line`` is 1-based."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"{line}: {message}")
        self.line = line
        self.message = message


# --- variables ---------------------------------------------------------------------------

def _today() -> datetime.date:
    return datetime.date.today()


def os_name() -> str:
    """The server's operating system as people say it ("macOS", not "Darwin")."""
    system = platform.system()
    return _OS_NAMES.get(system, system or "an unknown operating system")


def default_variables() -> dict[str, str]:
    """The built-in template variables, computed now (DATE changes while the server runs)."""
    return {"OS": os_name(), "DATE": _today().isoformat()}


# --- the role value ----------------------------------------------------------------------

@dataclass(frozen=True)
class Role:
    """A parsed role template; ``render`` turns it into chat messages for one request."""

    name: str
    description: str = ""
    messages: tuple[tuple[str, str], ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    variables: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def examples(self) -> int:
        """How many USER/ASSISTANT example pairs the template holds."""
        return sum(1 for kind, _ in self.messages if kind == "assistant")

    def render(self, variables: Mapping[str, str] | None = None) -> list[dict[str, str]]:
        """The messages with variables substituted; built-ins < registry < ``variables``."""
        values = {**default_variables(), **self.variables, **(variables or {})}
        values = {key: str(value) for key, value in values.items()}
        return [{"role": kind, "content": Template(text).safe_substitute(values)}
                for kind, text in self.messages]

    @property
    def model(self) -> str | None:
        """The model the role asks for when a request names none (front matter ``model``)."""
        return self.meta.get("model") or None

    def summary(self) -> dict[str, object]:
        """The public description used by ``GET /api/roles``."""
        summary = {"name": self.name, "description": self.description, "examples": self.examples}
        if self.model:
            summary["model"] = self.model
        return summary


# --- parsing -----------------------------------------------------------------------------

def parse_role(name: str, data: bytes | str) -> Role:
    """Parse one role file's content; raise ``RoleFileError`` at the first broken rule."""
    lines = _split_lines(_decode(data) if isinstance(data, bytes) else data)
    if not any(line.strip() for line in lines):
        raise RoleFileError(1, "the file is empty")
    meta, body_start = _front_matter(lines)
    sections = _sections(lines, body_start)
    _check_order(sections)
    messages = tuple((kind, text) for kind, text, _ in sections)
    description = meta.get("description", "")
    return Role(name=name, description=description, messages=messages,
                meta=MappingProxyType(meta))


def _decode(data: bytes) -> str:
    if len(data) > MAX_ROLE_BYTES:
        raise RoleFileError(1, f"the file is {len(data)} bytes, more than {MAX_ROLE_BYTES}")
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise RoleFileError(line, "the file is not valid UTF-8") from None


def _split_lines(text: str) -> list[str]:
    # Not str.splitlines(): it also splits on form feeds and U+2028, changing the content.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _front_matter(lines: list[str]) -> tuple[dict[str, str], int]:
    """Return the ``key: value`` pairs and the index of the first line after them."""
    if lines[0].rstrip() != "---":
        return {}, 0
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        raise RoleFileError(1, "front matter opened here is never closed with '---'")
    meta: dict[str, str] = {}
    for index in range(1, end):
        line = lines[index].strip()
        if line and not line.startswith("#"):
            key, value = _meta_pair(line, index + 1)
            if key in meta:
                raise RoleFileError(index + 1, f"front matter key '{key}' is given twice")
            meta[key] = value
    return meta, end + 1


def _meta_pair(line: str, number: int) -> tuple[str, str]:
    key, colon, value = line.partition(":")
    key = key.strip().lower()
    if not colon or not _META_KEY.fullmatch(key):
        raise RoleFileError(number, f"front matter line is not 'key: value': {line[:60]!r}")
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    if key == "model" and not _MODEL.fullmatch(value):
        raise RoleFileError(number, "front matter 'model' must be a model name: 1 to 200 "
                            "characters, no spaces or control characters")
    return key, value


def _sections(lines: list[str], start: int) -> list[tuple[str, str, int]]:
    """Split the body into ``(kind, text, heading line number)`` triples."""
    sections: list[tuple[str, str, int]] = []
    current: list[str] | None = None
    kind, heading_line = "", 0
    fence, fence_line = "", 0
    for index in range(start, len(lines)):
        line, number = lines[index], index + 1
        if fence:
            fence = "" if _closes_fence(line, fence) else fence
        elif (opened := _opens_fence(line)) is not None:
            fence, fence_line = opened, number
        elif (section := _heading(line, number)) is not None:
            if current is not None:
                sections.append(_section(kind, current, heading_line))
            kind, heading_line, current = section, number, []
            continue
        if current is None:
            if line.strip():
                raise RoleFileError(number, "text before the first '# SYSTEM', '# USER' "
                                            "or '# ASSISTANT' heading")
            continue
        current.append(line)
    if fence:
        raise RoleFileError(fence_line, "code fence opened here is never closed")
    if current is not None:
        sections.append(_section(kind, current, heading_line))
    return sections


def _heading(line: str, number: int) -> str | None:
    """The section kind if ``line`` is a level-1 heading; unknown headings are errors."""
    match = _HEADING.fullmatch(line)
    if match is None:
        return None
    title = (match.group(1) or "").strip()
    if title.lower() not in SECTIONS:
        raise RoleFileError(number, f"unknown heading '{line.strip()}' "
                                    "(expected # SYSTEM, # USER or # ASSISTANT)")
    return title.lower()


def _section(kind: str, lines: list[str], number: int) -> tuple[str, str, int]:
    text = "\n".join(lines).strip()
    if not text:
        raise RoleFileError(number, f"the '# {kind.upper()}' section is empty")
    return kind, text, number


def _opens_fence(line: str) -> str | None:
    match = _FENCE.fullmatch(line)
    if match is None:
        return None
    marker, info = match.groups()
    if marker[0] == "`" and "`" in info:  # CommonMark: that is inline code, not a fence
        return None
    return marker


def _closes_fence(line: str, marker: str) -> bool:
    match = _FENCE.fullmatch(line)
    return (match is not None and match.group(1)[0] == marker[0]
            and len(match.group(1)) >= len(marker) and not match.group(2).strip())


def _check_order(sections: list[tuple[str, str, int]]) -> None:
    """SYSTEM only first; then USER, ASSISTANT, USER, ... ending with ASSISTANT."""
    expected = "user"
    for position, (kind, _, number) in enumerate(sections):
        if kind == "system":
            if position:
                raise RoleFileError(number, "'# SYSTEM' must be the first section, and only one")
            continue
        if kind != expected:
            raise RoleFileError(number, f"'# {kind.upper()}' here breaks the turn order: "
                                        f"expected '# {expected.upper()}'")
        expected = "assistant" if kind == "user" else "user"
    if expected == "assistant":
        raise RoleFileError(sections[-1][2], "the last '# USER' has no '# ASSISTANT' answer")


# --- the registry --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    """What one file produced, and the stat signature it was read with."""

    signature: tuple
    role: Role | None
    problem: str | None


@dataclass(frozen=True)
class _Snapshot:
    roles: Mapping[str, Role]
    problems: tuple[str, ...]


class RoleRegistry:
    """The roles of one folder, shared by all requests and refreshed as files change.

    Reads never block on the folder: they use the current snapshot, and at most one caller
    per ``check_interval`` rescans (others keep the snapshot meanwhile).
    """

    def __init__(self, directory: str | os.PathLike[str],
                 variables: Mapping[str, str] | None = None, *,
                 check_interval: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._root = Path(directory).resolve()
        self._variables = MappingProxyType(dict(variables or {}))
        self._interval = check_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._snapshot = _Snapshot({}, ())
        self._next_check = 0.0
        self.refresh()

    @property
    def directory(self) -> Path:
        return self._root

    def get(self, name: str) -> Role:
        """The role called ``name``; ``BadRequest`` for a bad name, ``UnknownRole`` if absent."""
        validate_role_name(name)
        roles = self._current().roles
        role = roles.get(name)
        if role is None:
            known = ", ".join(sorted(roles))
            raise UnknownRole(f"unknown role '{name}'; known roles: {known}", field="role")
        return role

    def list(self) -> list[dict[str, object]]:
        """``[{"name", "description", "examples"}]`` for every loaded role, by name."""
        roles = self._current().roles
        return [roles[name].summary() for name in sorted(roles)]

    @property
    def problems(self) -> list[str]:
        """One ``"<folder>/<file>:<line>: <why>"`` line per file skipped or kept at its last
        good version."""
        return list(self._current().problems)

    def refresh(self) -> None:
        """Rescan the folder now (tests, or a reload signal), waiting for a running scan."""
        with self._lock:
            self._scan()

    def _current(self) -> _Snapshot:
        if self._clock() >= self._next_check and self._lock.acquire(blocking=False):
            try:
                if self._clock() >= self._next_check:
                    self._scan()
            finally:
                self._lock.release()
        return self._snapshot

    def _scan(self) -> None:
        """Build a new snapshot, re-reading only the files whose stat signature changed."""
        entries: dict[str, _Entry] = {}
        problems: list[str] = []
        try:
            found = self._list_files()
        except OSError as exc:
            found = []
            problems.append(f"{self._root}: cannot list the roles folder ({exc.strerror})")
        for stem, path in found:
            entries[stem] = self._entry(stem, path)
        self._entries = entries
        problems += [entry.problem for entry in entries.values() if entry.problem]
        self._snapshot = _Snapshot(self._roles_from(entries), tuple(problems))
        self._next_check = self._clock() + self._interval

    def _list_files(self) -> list[tuple[str, os.DirEntry[str]]]:
        with os.scandir(self._root) as listing:
            files = [(item.name[:-3], item) for item in listing
                     if item.name.endswith(".md") and not item.name.startswith(".")]
        return sorted(files, key=lambda pair: pair[1].name)

    def _entry(self, stem: str, item: os.DirEntry[str]) -> _Entry:
        label = f"{self._root.name}/{item.name}"
        if not ROLE_NAME.fullmatch(stem):
            return _Entry((), None, f"{label}:1: the file name is not a valid role name "
                                    f"(it must match {ROLE_NAME.pattern})")
        try:
            real, info = self._resolve(item)
        except _Skip as skip:
            return _Entry((), None, f"{label}:1: {skip}")
        signature = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, str(real))
        old = self._entries.get(stem)
        if old is not None and old.signature == signature:
            return old
        return self._load(stem, label, real, signature, old.role if old else None)

    def _resolve(self, item: os.DirEntry[str]) -> tuple[Path, os.stat_result]:
        """The real file behind a folder entry, refusing anything outside the folder."""
        try:
            info = item.stat(follow_symlinks=False)
            real = Path(item.path)
            if stat.S_ISLNK(info.st_mode):
                real = real.resolve(strict=True)
                if not real.is_relative_to(self._root):
                    raise _Skip("the symlink points outside the roles folder")
                info = real.stat()
        except OSError as exc:
            raise _Skip(f"cannot read the file ({exc.strerror or exc})") from None
        if not stat.S_ISREG(info.st_mode):
            raise _Skip("not a regular file")
        return real, info

    def _load(self, stem: str, label: str, real: Path, signature: tuple,
              last_good: Role | None) -> _Entry:
        """Read and parse one file; on failure keep serving its last good version, if any."""
        try:
            with open(real, "rb") as handle:
                data = handle.read(MAX_ROLE_BYTES + 1)
            role = parse_role(stem, data)
        except RoleFileError as exc:
            problem = f"{label}:{exc.line}: {exc.message}"
        except OSError as exc:
            problem = f"{label}:1: cannot read the file ({exc.strerror})"
        else:
            log.info("role loaded: %s", label)
            return _Entry(signature, replace(role, variables=self._variables), None)
        kept = "; serving its last good version" if last_good else ""
        log.warning("role file not loaded: %s%s", problem, kept)
        return _Entry(signature, last_good, problem)

    def _roles_from(self, entries: Mapping[str, _Entry]) -> dict[str, Role]:
        roles = {stem: entry.role for stem, entry in entries.items() if entry.role}
        roles.setdefault(DEFAULT_ROLE, Role(
            DEFAULT_ROLE, "No role template: the conversation is sent as it is.",
            variables=self._variables))
        return roles


class _Skip(Exception):
    """A folder entry that is not a loadable role file; the message says why."""


def validate_role_name(name: object) -> str:
    """Return ``name`` if it is a valid role name, else raise ``BadRequest`` (field "role")."""
    if not isinstance(name, str) or not ROLE_NAME.fullmatch(name):
        raise BadRequest("role must be a name of 1-64 characters: lowercase letters, digits, "
                         "'-' or '_', starting with a letter or digit", field="role")
    return name


# --- message assembly ----------------------------------------------------------------------

def assemble_messages(role_messages: Sequence[Mapping[str, str]],
                      history: Sequence[Mapping[str, object]], *,
                      system: str | None = None, max_chars: int,
                      last_from_user: bool = True) -> list[dict]:
    """Role messages, then the ad-hoc ``system`` message, then the history trimmed to fit.

    ``history`` was validated by the caller and, with ``last_from_user``, ends with a user
    message (the OpenAI API also lets a conversation end with tool results). The characters
    of ``system`` plus the kept history stay within ``max_chars``; the oldest turns go first,
    the newest message and the role/system messages never. Role-template characters do not
    count. If trimming dropped anything, the kept history starts at a user (or system) turn,
    so no answer or tool result is left without what it answered. A message's characters are
    those of its text (a string content, or the text parts of a list); every other field of
    a message is passed on as it is.
    """
    if not history or (last_from_user and history[-1].get("role") != "user"):
        raise BadRequest("the conversation must end with a user message", field="message")
    budget = max_chars - len(system or "")
    _check_newest_fits(message_chars(history[-1]), budget, max_chars)
    head = [{"role": m["role"], "content": m["content"]} for m in role_messages]
    if system:
        head.append({"role": "system", "content": system})
    return head + _trim_history(history, budget)


def message_chars(message: Mapping[str, object]) -> int:
    """The characters of a message's text: a string content, or the text of its parts."""
    return len(text_of(message.get("content")))


def _check_newest_fits(newest: int, budget: int, max_chars: int) -> None:
    if newest > max_chars:
        raise PayloadTooLarge(f"the message is {newest} characters long, more than "
                              f"MAX_HISTORY_CHARS ({max_chars})", field="message",
                              code="message_too_long")
    if newest > budget:
        raise PayloadTooLarge(f"the system text and the message together are longer than "
                         f"MAX_HISTORY_CHARS ({max_chars})", field="system",
                              code="message_too_long")


def _trim_history(history: Sequence[Mapping[str, object]], budget: int) -> list[dict]:
    """The longest suffix of ``history`` whose characters fit in ``budget``, starting at a
    user or system turn when anything was dropped (the newest message is always kept)."""
    start, total = len(history), 0
    while start > 0 and total + (size := message_chars(history[start - 1])) <= budget:
        start -= 1
        total += size
    if start > 0:
        while start < len(history) - 1 and history[start].get("role") not in _OPENERS:
            start += 1
    return [dict(m) for m in history[start:]]


_OPENERS = ("user", "system", "developer")
