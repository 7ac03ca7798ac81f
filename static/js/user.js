// `user`: accounts, through the GPT Terminal user protocol (POST /api/user/...). `user register`,
// `user login`, `user logout`, `user password`, and `user` alone: who is signed in.
//
// A password is a secret the page never shows or keeps:
// - without -p the terminal asks for it in a masked field (Ctrl+C cancels), whose answer is not
//   echoed, not even its length;
// - a -p given inline is masked where the command line is shown (`maskSecrets`), and the
//   command history keeps the line without it (`historyLine`), so Up brings back
//   `user login -u ann`, which asks for the password again;
// - no message repeats a word of a `user` command that could be a password.
// The session is an HttpOnly cookie the page never sees; who is signed in is `app.user`.

import { UsageError, parseOptions, tokenize } from "./args.js";
import { ApiError, postEnvelope } from "./api.js";
import { SIGN_IN_HINT, setUser, whoIsSignedIn } from "./account.js";
import { loadRoles, resolveRole } from "./roles.js";
import { ownRoles, settings } from "./store.js";

export const USER_SUBCOMMANDS = ["register", "login", "logout", "password"];
const MASK = "********";

const USERNAME = { short: "u", long: "username", key: "username", value: true, valueName: "username", example: "user login -u ann" };
const PASSWORD = { short: "p", long: "password", key: "password", value: true, valueName: "password", example: "user login -u ann (the terminal then asks for it)" };
export const LOGIN_OPTIONS = [USERNAME, PASSWORD];
export const REGISTER_OPTIONS = [
  { ...USERNAME, example: "user register -u ann" },
  { ...PASSWORD, example: "user register -u ann (the terminal then asks for it)" },
  { short: "e", long: "email", key: "email", value: true, valueName: "email address", example: "user register -u ann -e ann@example.com" },
  { short: "i", long: "invite", key: "invite", value: true, valueName: "invite code", example: "user register -u ann -i <code>" },
];
const SHOWN_VALUES = new Set(["-u", "--username", "-e", "--email", "-i", "--invite"]);

/**
 * Where a line holds a secret: [{mask: [from, to] (the characters to hide), cut: [from, to]
 * (what the history leaves out: the option and its value)}]. On a `user` line: the value of
 * -p/--password, and any word that is neither an option nor the value of -u, -e or -i (a
 * password typed without its -p); after `user password`, every word. `gpt token <token>`: the
 * token.
 */
function secretSpans(line) {
  const { words, starts, ends } = tokenize(line, { partial: true });
  const spans = [];
  if (words[0] === "gpt" && words[1] === "token" && words.length > 2 && words[2] !== "--clear") {
    spans.push({ mask: [starts[2], ends[words.length - 1]], cut: [starts[2], ends[words.length - 1]] });
  }
  if (words[0] !== "user" || words.length < 3) return spans;
  if (words[1] === "password") {
    spans.push({ mask: [starts[2], ends[words.length - 1]], cut: [starts[2], ends[words.length - 1]] });
    return spans;
  }
  for (let i = 2; i < words.length; i++) {
    const word = words[i];
    const raw = line.slice(starts[i], ends[i]);
    if (SHOWN_VALUES.has(word)) {
      i++; // its value is shown
    } else if (word === "-p" || word === "--password") {
      if (i + 1 < words.length) spans.push({ mask: [starts[i + 1], ends[i + 1]], cut: [starts[i], ends[i + 1]] });
      i++;
    } else if (word.startsWith("-p") && raw.startsWith("-p")) {
      spans.push({ mask: [starts[i] + 2, ends[i]], cut: [starts[i], ends[i]] });
    } else if (word.startsWith("--password=") && raw.startsWith("--password=")) {
      spans.push({ mask: [starts[i] + 11, ends[i]], cut: [starts[i], ends[i]] });
    } else if (!/^--?[A-Za-z]/.test(raw)) { // not an option: a password typed without -p?
      spans.push({ mask: [starts[i], ends[i]], cut: [starts[i], ends[i]] });
    }
  }
  return spans;
}

function splice(line, spans, what, text) {
  let out = line;
  for (const span of [...spans].sort((a, b) => b[what][0] - a[what][0])) {
    const [from, to] = span[what];
    out = out.slice(0, from) + text + out.slice(to);
  }
  return out;
}

/** The line as the output shows it: any password (or token) in it masked. */
export function maskSecrets(line) {
  const spans = secretSpans(line);
  return spans.length ? splice(line, spans, "mask", MASK) : line;
}

/** What the command history keeps of a line: the line without its secrets (null: nothing;
 * a `gpt token` line is not kept at all). */
export function historyLine(line) {
  if (/^\s*gpt\s+token\s+\S/.test(line)) return null;
  const spans = secretSpans(line);
  if (!spans.length) return line;
  return splice(line, spans, "cut", "").replace(/\s+/g, " ").trim();
}

// ---- the command ----------------------------------------------------------------------------

export async function user(words, app) {
  const [sub, ...rest] = words;
  switch (sub) {
    case undefined: return whoami(app);
    case "register": return register(rest, app);
    case "login": return login(rest, app);
    case "logout": return logout(rest, app);
    case "password": return changePassword(rest, app);
    default:
      // Never repeat the rest of the line: it may hold a password.
      throw new UsageError(`user: unknown subcommand ${sub.length > 20 ? `${sub.slice(0, 20)}…` : sub}`,
        `user commands: ${USER_SUBCOMMANDS.map((s) => `user ${s}`).join(", ")}, or user alone (see: help user)`);
  }
}

/** The options of a `user` subcommand; nothing else is allowed (and a stray word, which may be
 * a password typed without -p, is not repeated). */
function options(words, spec, command) {
  const { options: found, rest } = parseOptions(words, spec, command);
  if (rest.length) {
    throw new UsageError(`${command}: unexpected words after the options (not shown: one may be a password)`,
      `e.g. ${spec[0].example}; a value with spaces needs quotes`);
  }
  return found;
}

function username(found, command) {
  const name = (found.username || "").trim();
  if (!name) throw new UsageError(`${command} needs a username: -u <name>`, `e.g. ${command} -u ann`);
  return name;
}

function passwordHint() {
  return { usage: "Enter sends · Ctrl+C cancels", about: "what you type is not shown" };
}

/** Ask for a password in the masked field: the answer, or null (cancelled: said so). */
async function askPassword(app, label, autocomplete, cancelled) {
  const answer = await app.term.ask({ label, secret: true, autocomplete, hint: passwordHint });
  if (answer === null) {
    app.term.print(`cancelled: ${cancelled}`, "dim");
    return null;
  }
  if (!answer) {
    app.term.error("the password is empty", "type it at the password prompt, or Ctrl+C to cancel");
    return null;
  }
  return answer;
}

/** A new password, asked twice (a typo in a masked field cannot be seen); null: not given. */
async function askNewPassword(app, label, cancelled) {
  const first = await askPassword(app, label, "new-password", cancelled);
  if (first === null) return null;
  const again = await askPassword(app, `${label} again`, "new-password", cancelled);
  if (again === null) return null;
  if (again !== first) {
    app.term.error("the two passwords differ", "nothing was done: run the command again");
    return null;
  }
  return first;
}

/** Refusals of the account routes, with what to do about them. */
function refused(err, hint) {
  if (err instanceof ApiError) {
    if (err.status === 403 && /accounts are off/.test(err.message)) {
      err.hint = "this server has no accounts: it needs none, or a proxy token (gpt token <token>)";
    } else if (/retry in \d+ s/.test(err.message)) {
      err.hint = "too many attempts: wait as long as it says, then try again";
    } else if (hint) {
      err.hint = hint;
    }
  }
  return err;
}

async function signIn(app, name, password) {
  let signed;
  try {
    signed = await postEnvelope("/api/user/login", { username: name, password });
  } catch (err) {
    throw refused(err, err.status === 404 ? `check both and try again: user login -u ${name} (no account yet? user register -u <name>)` : "");
  }
  setUser(app, signed);
  await loadRoles(app).catch(() => {}); // the account's own roles; `gpt role` asks again
}

function signedInNotes(app) {
  const { term } = app;
  term.print(`your own roles are now those saved under your account (gpt diy --list); keys for SDKs and chat apps: gpt key create`, "dim");
  if (ownRoles.list().length) {
    term.print("the roles kept in this browser are not used while you are signed in (user logout brings them back)", "dim");
  }
}

async function login(words, app) {
  const { term } = app;
  const found = options(words, LOGIN_OPTIONS, "user login");
  const name = username(found, "user login");
  const password = found.password !== undefined ? found.password : await askPassword(app, "password", "current-password", "not signed in");
  if (password === null) return;
  await signIn(app, name, password);
  term.print(`signed in as ${app.user.username}`, "ok");
  signedInNotes(app);
}

async function register(words, app) {
  const { term } = app;
  const found = options(words, REGISTER_OPTIONS, "user register");
  const name = username(found, "user register");
  const password = found.password !== undefined ? found.password : await askNewPassword(app, "new password", "no account was made");
  if (password === null) return;
  const body = { username: name, password };
  if (found.email !== undefined) body.email = found.email.trim();
  if (found.invite !== undefined) body.invite = found.invite.trim();
  try {
    await postEnvelope("/api/user/register", body);
  } catch (err) {
    throw refused(err, err.status === 403 ? "ask the operator for an account (or an invite code: user register -u <name> -i <code>)" : "");
  }
  await signIn(app, name, password);
  term.print(`made the account ${app.user.username} and signed in`, "ok");
  signedInNotes(app);
}

async function logout(words, app) {
  const { term } = app;
  options(words, [], "user logout");
  const wasOwnDefault = Boolean(app.user && resolveRole(app, app.settings.role).own);
  try {
    await postEnvelope("/api/user/logout");
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401) throw refused(err, "");
    setUser(app, null);
    term.print("you were not signed in", "dim");
    return;
  }
  setUser(app, null);
  await loadRoles(app).catch(() => {});
  term.print("signed out", "ok");
  if (wasOwnDefault) {
    // The default role was one of the account's: without the account it names nothing.
    settings.set({ role: "default" });
    app.settings.role = "default";
    term.setRole("default");
    term.print("default role: default (yours is saved under your account)", "ok");
  }
}

async function changePassword(words, app) {
  const { term } = app;
  if (words.length) {
    throw new UsageError("user password takes no arguments (not shown: they may be passwords)", "just type: user password (the terminal asks)");
  }
  if (!(await whoIsSignedIn(app))) throw new UsageError("you are not signed in", SIGN_IN_HINT);
  const current = await askPassword(app, "current password", "current-password", "the password is as it was");
  if (current === null) return;
  const next = await askNewPassword(app, "new password", "the password is as it was");
  if (next === null) return;
  try {
    await postEnvelope("/api/user/password", { password: current, newPassword: next });
  } catch (err) {
    throw refused(err, err.status === 400 && /current password/.test(err.message) ? "run user password again" : "");
  }
  term.print("password changed: your sessions in other browsers have ended (this one goes on)", "ok");
}

async function whoami(app) {
  const { term } = app;
  const signed = await whoIsSignedIn(app);
  if (signed) {
    term.print(`signed in as ${signed.username}${signed.email ? ` (${signed.email})` : ""}`, "ok");
    term.print("your keys: gpt key list · your roles: gpt diy --list · sign out: user logout", "dim");
    return;
  }
  term.print("not signed in", "dim");
  if (app.auth === "open") term.print("this server has no accounts: it asks nobody to sign in", "dim");
  else if (app.auth === "token") term.print("this server uses a proxy token rather than accounts: gpt token <token>", "dim");
  else term.print(SIGN_IN_HINT, "dim");
}
