// `gpt diy`: roles of the user's own, kept in this browser, or on the server under the
// signed-in user (ownroles.js: the same commands either way). Making one asks for its
// definition (the system prompt) at the prompt; the definition is checked against the server's
// limit (GET /api/limits) when it is saved, so a role that is kept is one the server will
// accept. Should the server still refuse it (a role of that keyword made meanwhile, in another
// tab or browser), the definition comes back to the prompt: nothing typed is lost.
// Names, descriptions and definitions are the user's text: they are only ever set as text.

import { UsageError, parseOptions } from "./args.js";
import { ApiError, getLimits } from "./api.js";
import { explain, tokenFor } from "./account.js";
import { ownRoleStore } from "./ownroles.js";
import { DEFAULT_ROLE, ROLE_NAME, conversationKey, loadRoles, resolveRole, serverRoleNames } from "./roles.js";
import { roleFile } from "./rolefile.js";
import { conversations, settings } from "./store.js";

const EXAMPLE = `gpt diy -k poet -n "Haiku poet" -d "Answers in haiku"`;
const EDIT_EXAMPLE = `gpt diy --edit poet -d "Answers in a haiku, then a title"`;
const MAX_NAME_CHARS = 100;
const MAX_DESCRIPTION_CHARS = 300;

export const DIY_OPTIONS = [
  { short: "k", long: "keyword", key: "keyword", value: true, valueName: "keyword", example: EXAMPLE },
  { short: "n", long: "name", key: "name", value: true, valueName: "name", example: EXAMPLE },
  { short: "d", long: "description", key: "description", value: true, valueName: "description", example: EXAMPLE },
  { long: "list", key: "list" },
  { long: "show", key: "show", value: true, valueName: "keyword", example: "gpt diy --show poet" },
  { long: "export", key: "export", value: true, valueName: "keyword", example: "gpt diy --export poet" },
  { long: "delete", key: "delete", value: true, valueName: "keyword", example: "gpt diy --delete poet" },
  { long: "edit", key: "edit", value: true, valueName: "keyword", example: EDIT_EXAMPLE },
];
const ACTIONS = ["list", "show", "export", "delete", "edit"];
const MAKING = ["keyword", "name", "description"];

export async function diy(words, app) {
  const { options, rest } = parseOptions(words, DIY_OPTIONS, "gpt diy");
  if (rest.length) {
    throw new UsageError(`gpt diy: unexpected "${rest.join(" ")}" (a value with spaces needs quotes)`,
      `quote a name or description that has spaces: ${EXAMPLE}`);
  }
  const actions = ACTIONS.filter((a) => options[a] !== undefined);
  const editing = options.edit !== undefined;
  if (editing && options.keyword !== undefined) {
    throw new UsageError("gpt diy --edit names the role to change; -k is for making a new one",
      `e.g. ${EDIT_EXAMPLE} (a new keyword: make the role anew, then delete the old one)`);
  }
  // --edit may come with -n and -d (a new name or description); every other action stands alone
  const making = !editing && MAKING.some((k) => options[k] !== undefined);
  if (!actions.length && !making) {
    throw new UsageError("gpt diy needs -k, -n and -d to make a role, or one of --list, --show, --edit, --export, --delete", `e.g. ${EXAMPLE}`);
  }
  if (actions.length + (making ? 1 : 0) > 1) {
    throw new UsageError("gpt diy does one thing at a time", `e.g. gpt diy --list, or ${EXAMPLE}`);
  }
  const store = ownRoleStore(app);
  if (store.server && actions.length) await loadRoles(app); // the account's roles as they are now
  switch (actions[0]) {
    case "list": return list(app, store);
    case "show": return show(app, store, options.show);
    case "export": return exportRole(app, store, options.export);
    case "delete": return remove(app, store, options.delete);
    case "edit": return edit(app, store, options);
    default: return make(app, store, options);
  }
}

/** Characters as the server counts them (code points: an emoji is one, not two). */
export function charCount(text) {
  let count = 0;
  for (const _ of text) count++;
  return count;
}

function oneLine(value, what, flag, max) {
  if (value === undefined) throw new UsageError(`gpt diy needs a ${what}: ${flag} <${what}>`, `e.g. ${EXAMPLE}`);
  const text = value.trim();
  if (!text) throw new UsageError(`gpt diy: the ${what} is empty`, `e.g. ${EXAMPLE}`);
  if (/[\r\n]/.test(text)) throw new UsageError(`gpt diy: the ${what} must be one line`, `e.g. ${EXAMPLE}`);
  if (charCount(text) > max) throw new UsageError(`gpt diy: the ${what} is longer than ${max} characters`, "the definition is the place for the details");
  return text;
}

function checkKeyword(keyword) {
  if (keyword === undefined) throw new UsageError("gpt diy needs a keyword: -k <keyword>", `e.g. ${EXAMPLE}`);
  if (!ROLE_NAME.test(keyword)) {
    const better = keyword.toLowerCase().replace(/[^a-z0-9_-]+/g, "-").replace(/^[-_]+/, "").slice(0, 64) || "my-role";
    throw new UsageError(`"${keyword}" cannot be a keyword: lowercase letters, digits, - and _ (at most 64, starting with a letter or digit)`, `e.g. -k ${better}`);
  }
  return keyword;
}

/** Refuse a keyword that a server role or another own role already has. */
function checkFree(app, store, keyword) {
  if (serverRoleNames(app).includes(keyword)) {
    throw new UsageError(`"${keyword}" is a role on the server; your own role needs a keyword of its own`,
      `pick another, e.g. -k ${`my-${keyword}`.slice(0, 64)}`);
  }
  if (store.get(keyword)) {
    throw new UsageError(`you already have a role "${keyword}"`, `pick another keyword, or first: gpt diy --delete ${keyword}`);
  }
}

/** Keep a role in `store` (`change(role)`: create or update); a refusal as [message, hint] to
 * ask again with, or null when it is kept. A refusal by the server (a keyword taken
 * meanwhile, a definition too long) is such a problem, so the definition is not lost. */
async function keep(app, change) {
  try {
    await change();
    return null;
  } catch (err) {
    if (err instanceof UsageError) return [err.message, err.hint];
    if (!(err instanceof ApiError)) throw err;
    if (/already have a role/.test(err.message)) return [err.message, "Ctrl+C, then pick another keyword"];
    return [err.message, `${explain(err, app) || "change it"}; Enter tries again, Ctrl+C cancels`];
  }
}

function definitionProblem(definition, max) {
  if (!definition) return ["the definition is empty", "type the system prompt and press Enter, or Ctrl+C to cancel"];
  if (typeof definition.isWellFormed === "function" && !definition.isWellFormed()) {
    return ["the definition holds a broken character (half of a UTF-16 pair)", "retype or remove it, or Ctrl+C to cancel"];
  }
  const count = charCount(definition);
  if (count > max) {
    return [`the definition is ${count} characters long; this server accepts at most ${max}`,
      "shorten it and press Enter again, or Ctrl+C to cancel"];
  }
  return null;
}

function definitionHint(text, max) {
  const count = charCount(text.trim());
  return { usage: "Enter saves · Shift+Enter: new line · Ctrl+C cancels", about: `${count} of at most ${max} characters`, warn: count > max };
}

async function make(app, store, options) {
  const { term } = app;
  const keyword = checkKeyword(options.keyword);
  const name = oneLine(options.name, "name", "-n", MAX_NAME_CHARS);
  const description = oneLine(options.description, "description", "-d", MAX_DESCRIPTION_CHARS);
  await loadRoles(app); // the server's roles (and, signed in, the user's own) as they are now
  checkFree(app, store, keyword);
  const max = (await getLimits({ token: tokenFor(app) })).max_system_chars;
  term.print(`The definition of ${keyword}: the system prompt the model gets with every message to this role. ` +
    `Enter saves it, Shift+Enter starts a new line, Ctrl+C cancels. At most ${max} characters.`, "dim");
  const role = { keyword, name, description, definition: "", created: new Date().toISOString() };
  const definition = await askDefinition(term, keyword, "", max, (text) => {
    if (!store.server && store.get(keyword)) {
      return [`you already have a role "${keyword}" (made meanwhile, in another tab?)`, "Ctrl+C, then pick another keyword"];
    }
    role.definition = text;
    return keep(app, () => store.create(role));
  });
  if (definition === null) {
    term.print(`cancelled: no role ${keyword} was made`, "dim");
    return;
  }
  if (store.server) await loadRoles(app);
  conversations.reset(conversationKey(app, keyword, true)); // nothing left over from an earlier role of this keyword
  term.print(`made your role ${keyword}: gpt chat -r ${keyword} <message> · make it the default: gpt role ${keyword}` +
    (store.server ? " (saved under your account: any browser you sign in from has it)" : ""), "ok");
}

/**
 * Ask for a definition at the prompt, starting from `value`, until it is one the server
 * accepts and `commit(definition)` keeps (it answers a problem as [message, hint], or
 * null): the definition, or null on Ctrl+C. A refused answer comes back to the prompt as it
 * was typed, so nothing typed is lost.
 */
async function askDefinition(term, keyword, value, max, commit) {
  for (;;) {
    const answer = await term.ask({ label: `${keyword} definition`, value, hint: (text) => definitionHint(text, max) });
    if (answer === null) return null;
    const definition = answer.trim();
    const problem = definitionProblem(definition, max) || await commit(definition);
    if (!problem) return definition;
    term.error(...problem);
    value = answer;
  }
}

/** `--edit <keyword> [-n name] [-d description]`: change a role, its definition asked for
 * again starting from the one it has. Its conversation is kept (gpt reset forgets it). */
async function edit(app, store, options) {
  const { term } = app;
  const keyword = options.edit;
  const role = await find(store, keyword);
  const name = options.name === undefined ? role.name : oneLine(options.name, "name", "-n", MAX_NAME_CHARS);
  const description = options.description === undefined ? role.description
    : oneLine(options.description, "description", "-d", MAX_DESCRIPTION_CHARS);
  const max = (await getLimits({ token: tokenFor(app) })).max_system_chars;
  term.print(`Change the definition of ${keyword} (it is in the prompt as it is now). ` +
    `Enter saves it, Shift+Enter starts a new line, Ctrl+C leaves the role as it was. At most ${max} characters.`, "dim");
  const changed = { ...role, name, description, edited: new Date().toISOString() };
  const definition = await askDefinition(term, keyword, role.definition, max, (text) => {
    if (!store.server && !store.get(keyword)) {
      return [`your role "${keyword}" is gone (deleted meanwhile, in another tab?)`, `Ctrl+C, then make it again: ${EXAMPLE}`];
    }
    changed.definition = text;
    return keep(app, () => store.update(keyword, changed));
  });
  if (definition === null) {
    term.print(`cancelled: your role ${keyword} is as it was`, "dim");
    return;
  }
  if (store.server) await loadRoles(app);
  const what = [name !== role.name && "name", description !== role.description && "description",
    definition !== role.definition && "definition"].filter(Boolean);
  term.print(what.length ? `changed your role ${keyword}: its ${what.join(", ")} (its conversation is kept; gpt reset -r ${keyword} forgets it)`
    : `your role ${keyword} is unchanged`, "ok");
}

/** One of the user's own roles, whole (its definition loaded); a UsageError if there is none. */
async function find(store, keyword) {
  const role = store.get(keyword) && await store.load(keyword);
  if (!role) {
    const mine = store.list().map((r) => r.keyword);
    throw new UsageError(`you have no role "${keyword}"`, mine.length ? `your roles: ${mine.join(", ")}` : `make one: ${EXAMPLE}`);
  }
  return role;
}

function hiddenNote(app, store, keyword) {
  return !store.server && serverRoleNames(app).includes(keyword) ? " (hidden: the server now has a role of this name, which -r uses)" : "";
}

/** The user's own roles as a list (empty: null); `gpt role` shows it under the server's. */
export function ownRoleList(app) {
  const store = ownRoleStore(app);
  const roles = store.list();
  if (!roles.length) return null;
  const list = document.createElement("dl");
  list.className = "role-list own-roles";
  for (const role of roles) {
    const dt = document.createElement("dt");
    dt.textContent = role.keyword === app.settings.role ? `${role.keyword} *` : role.keyword;
    const dd = document.createElement("dd");
    dd.textContent = `${role.name}: ${role.description}${hiddenNote(app, store, role.keyword)}`;
    list.append(dt, dd);
  }
  return list;
}

function list(app, store) {
  const { term } = app;
  const roles = ownRoleList(app);
  if (!roles) {
    term.print("you have no roles of your own yet", "dim");
    term.print(`make one: ${EXAMPLE}`, "dim");
    return;
  }
  term.print(`Your own roles (${store.where}):`, "heading");
  term.output.appendChild(roles);
  term.print("Use one: gpt chat -r <keyword> <message> · more: gpt diy --show <keyword>", "dim");
}

async function show(app, store, keyword) {
  const { term } = app;
  const role = await find(store, keyword);
  term.print(`${role.keyword}: ${role.name}${hiddenNote(app, store, keyword)}`, "heading");
  term.print(role.description);
  const facts = [role.created && `made ${role.created.slice(0, 10)}`, `${charCount(role.definition)} characters`,
    store.server && "saved under your account"].filter(Boolean);
  term.print(facts.join(" · "), "dim");
  term.block("definition", role.definition);
  // A role made by the GPT Terminal page may hold example turns after its definition.
  for (const example of role.examples || []) {
    term.print(`example, ${example.role === "user" ? "the user" : `the ${example.role}`}:`, "dim");
    term.block("definition example", example.content);
  }
}

async function exportRole(app, store, keyword) {
  const { term } = app;
  const { text, notes } = roleFile(await find(store, keyword));
  // A server whose MAX_SYSTEM_CHARS is large accepts definitions bigger than a role file may be.
  const maxBytes = (await getLimits({ token: tokenFor(app) })).max_role_file_bytes;
  const bytes = new TextEncoder().encode(text).length;
  if (Number.isSafeInteger(maxBytes) && bytes > maxBytes) {
    notes.push(`this file is ${bytes} bytes and the server loads role files of at most ${maxBytes}: ` +
      `as it is, the server would refuse it (shorten the definition, or keep the role ${store.server ? "under your account" : "in the browser"})`);
  }
  term.print(`To install it on the server, save this as roles/${keyword}.md in the server's roles folder (ROLES_DIR); ` +
    `it loads within a second. The server's role then takes the place of yours (gpt diy --delete ${keyword} tidies up).`, "dim");
  term.block("role-file", text, "pre");
  for (const note of notes) term.print(`note: ${note}`, "note");
}

async function remove(app, store, keyword) {
  const { term } = app;
  if (!store.get(keyword)) await find(store, keyword); // says there is none
  const wasDefault = app.settings.role === keyword && resolveRole(app, keyword).own !== null;
  const key = conversationKey(app, keyword, true);
  const count = conversations.get(key).length;
  await store.remove(keyword);
  if (store.server) await loadRoles(app);
  conversations.reset(key);
  term.print(`deleted your role ${keyword}` + (count ? ` and its conversation (${count} messages)` : ""), "ok");
  if (wasDefault) {
    settings.set({ role: DEFAULT_ROLE });
    app.settings.role = DEFAULT_ROLE;
    term.setRole(DEFAULT_ROLE);
    term.print(`default role: ${DEFAULT_ROLE}`, "ok");
  }
}
