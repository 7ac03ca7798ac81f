// The commands: what each one is called, its options, its help text, and what it does.
// `help` is generated from COMMANDS, so a command cannot exist without being listed.

import { UsageError, parseOptions, tokenize, unclosed } from "./args.js";
import { explain } from "./account.js";
import { ApiError } from "./api.js";
import { runChat } from "./chat.js";
import { diy, ownRoleList } from "./diy.js";
import { runImage } from "./image.js";
import { key } from "./keys.js";
import { usage } from "./usage.js";
import { MarkdownView } from "./markdown.js";
import { ownRoleStore } from "./ownroles.js";
import { checkRole, loadRoles, resolveRole, roleNames, serverRoleNames } from "./roles.js";
import { commands as commandStore, conversations, settings } from "./store.js";
import { USER_SUBCOMMANDS, user } from "./user.js";

const ROLE_OPTION = { short: "r", long: "role", key: "role", value: true, valueName: "role name", example: "-r ikun" };
export const CHAT_OPTIONS = [
  ROLE_OPTION,
  { short: "t", long: "temperature", key: "temperature", value: true, valueName: "number from 0 to 2", example: "-t 0.7" },
  { short: "m", long: "model", key: "model", value: true, valueName: "model name", example: "-m gpt-4o-mini" },
];

const IMAGE_USAGE = "gpt image <prompt> [-n 1..5] [-s 256|512|1024]";
export const IMAGE_OPTIONS = [
  { short: "n", long: "number", key: "number", value: true, valueName: "number from 1 to 5", example: "-n 2" },
  { short: "s", long: "size", key: "size", value: true, valueName: "size: 256, 512 or 1024", example: "-s 512" },
];
export const IMAGE_SIZES = ["256", "512", "1024"];

export const COMMANDS = [
  {
    name: "gpt chat",
    usage: "gpt chat [-r role] [-t temperature] [-m model] <message>",
    about: "Ask the model. The reply streams in; Ctrl+C stops it. Quotes group words; options go before the message.",
    options: [
      ["-r, --role <name>", "use this role's template and conversation (default: the role set by gpt role)"],
      ["-t, --temperature <0..2>", "lower is steadier, higher is more inventive"],
      ["-m, --model <name>", "ask this model instead of the one set by gpt model"],
    ],
    examples: ["gpt chat -r ikun hi", "gpt chat -t 0.2 'what does \"tail -f\" do?'"],
  },
  {
    name: "gpt image",
    usage: IMAGE_USAGE,
    about: "Draw images from a description. A progress line shows while they are made, then the images; Ctrl+C stops it. " +
      "The options may come before or after the prompt.",
    options: [
      ["-n, --number <1..5>", "how many images (default 1)"],
      ["-s, --size <256|512|1024>", "their width and height in pixels (default 256)"],
    ],
    examples: ["gpt image a lighthouse at night, oil painting", "gpt image -n 2 -s 512 a cat reading a newspaper"],
  },
  { name: "gpt role", usage: "gpt role [name]", about: "Without a name: list the roles, the server's and your own. With a name: make it the default role." },
  {
    name: "gpt diy",
    usage: "gpt diy -k <keyword> -n <name> -d <description> | --list | --show <keyword> | --edit <keyword> [-n <name>] [-d <description>] | --export <keyword> | --delete <keyword>",
    about: "Make a role of your own, kept in this browser (signed in: saved under your account, in every browser you sign in from): " +
      "the terminal then asks for its definition, the system prompt " +
      "sent with every message to it (Enter saves, Shift+Enter adds a line, Ctrl+C cancels; the server sets the longest " +
      "allowed). Use it like any role: gpt chat -r <keyword>, gpt role <keyword>. Each keeps its own conversation.",
    options: [
      ["-k, --keyword <keyword>", "what to call it by: lowercase letters, digits, - and _; not a server role's name or another of yours"],
      ["-n, --name <name>", "its name, shown in the lists (quote it if it has spaces)"],
      ["-d, --description <text>", "what it does, shown by gpt role"],
      ["--list", "list your own roles"],
      ["--show <keyword>", "show one, with its definition"],
      ["--edit <keyword>", "change it: the definition comes back to the prompt as it is, to edit; -n and -d give it a new name or description; the conversation is kept"],
      ["--export <keyword>", "print it as a roles/<keyword>.md file for the server's operator to install"],
      ["--delete <keyword>", "forget it and its conversation"],
    ],
    examples: ['gpt diy -k poet -n "Haiku poet" -d "Answers in haiku"', "gpt chat -r poet the sea at night", "gpt diy --export poet"],
  },
  { name: "gpt model", usage: "gpt model [name | --default]", about: "Show the model asked for, or set it (--default: the server's choice)." },
  { name: "gpt history", usage: "gpt history [-r role]", about: "Show the role's conversation, which each follow-up sends along.", options: [["-r, --role <name>", "another role than the default"]] },
  { name: "gpt reset", usage: "gpt reset [-r role]", about: "Forget the role's conversation and start afresh.", options: [["-r, --role <name>", "another role than the default"]] },
  { name: "gpt token", usage: "gpt token [token | --clear]", about: "Set the proxy token, if the server asks for one, or an API key of yours (kept in this browser, never in the history; not sent while you are signed in)." },
  {
    name: "gpt key",
    usage: "gpt key create [-n name] [--days N] [--models a,b] | list | revoke <id>",
    about: "Your API keys, for SDKs, chat apps and scripts (signed in only). A new key is shown once: store it then.",
    options: [
      ["create", "make a key; the server keeps only its fingerprint, so it is shown this once"],
      ["-n, --name <name>", "what it is for, shown by gpt key list (quote it if it has spaces)"],
      ["--days <N>", "it stops working after N days (default: never)"],
      ["--models <a,b>", "it works for these models only (default: any the server allows)"],
      ["list", "your keys: id, name, its first and last characters, when made and last used"],
      ["revoke <id>", "stop a key, everywhere, within a second"],
    ],
    actions: ["create", "list", "revoke"],
    examples: ['gpt key create -n "my laptop" --days 90', "gpt key list", "gpt key revoke 3"],
  },
  {
    name: "gpt usage",
    usage: "gpt usage [--days N]",
    about: "What you spent: each budget that applies to you as a bar of this period's spend, what is left and when it resets; then today's spend and the last days' by model.",
    options: [["--days <N>", "how many days of spend to list (default 7)"]],
    examples: ["gpt usage", "gpt usage --days 30"],
  },
  {
    name: "user",
    usage: "user [register | login | logout | password]",
    about: "Alone: who is signed in. Accounts keep your own roles and API keys on the server (on a server with AUTH=users).",
  },
  {
    name: "user register",
    usage: "user register -u <name> [-p <password>] [-e <email>] [-i <invite>]",
    about: "Make an account and sign in. Without -p the terminal asks for the password twice, hidden.",
    options: [
      ["-u, --username <name>", "1-32 letters, digits, _ . and -"],
      ["-p, --password <password>", "at least 8 characters; better left out, to be asked for hidden"],
      ["-e, --email <address>", "optional"],
      ["-i, --invite <code>", "an invite code, where the server asks for one"],
    ],
    examples: ["user register -u ann -e ann@example.com"],
  },
  {
    name: "user login",
    usage: "user login -u <name> [-p <password>]",
    about: "Sign in. Without -p the terminal asks for the password, hidden (Ctrl+C cancels).",
    options: [
      ["-u, --username <name>", "your username"],
      ["-p, --password <password>", "better left out, to be asked for hidden; never kept in the history"],
    ],
    examples: ["user login -u ann"],
  },
  { name: "user logout", usage: "user logout", about: "Sign out (this browser's session ends)." },
  { name: "user password", usage: "user password", about: "Change your password: the terminal asks for the current one and the new one, hidden. Your other sessions end." },
  {
    name: "console",
    usage: "console",
    about: "Open the console in this tab: your keys, budgets and usage as charts (admins: users, budgets, the ledger, upstreams). Back returns here.",
  },
  { name: "clear", usage: "clear", about: "Clear the screen (also Ctrl+L)." },
  { name: "history", usage: "history [-c]", about: "List the commands typed before (Up/Down walk them).", options: [["-c", "forget them"]] },
  { name: "help", usage: "help [command]", about: "List the commands, or explain one: help gpt chat." },
];

const KEYS = [
  ["Enter", "run the command (Shift+Enter: a new line)"],
  ["Up / Down", "walk the command history"],
  ["Tab", "complete a command, option or role name (Esc then Tab: move focus on)"],
  ["Ctrl+C", "stop the running reply"],
  ["Ctrl+L", "clear the screen"],
];

export const TOP = ["gpt", "user", "console", "clear", "history", "help"];
export const GPT_SUBCOMMANDS = COMMANDS.filter((c) => c.name.startsWith("gpt ")).map((c) => c.name.slice(4));
export { USER_SUBCOMMANDS };

/** `gpt` alone: for the hint line and `help gpt`. */
export const GPT_COMMAND = {
  name: "gpt",
  usage: `gpt <${GPT_SUBCOMMANDS.join(" | ")}> ...`,
  about: "Talk to the model and manage its roles and your keys; help gpt explains each.",
};

/** Run one command line. Every failure ends as a one-line explanation and a hint. */
export async function runCommand(line, app) {
  const { term } = app;
  try {
    // A chat message is the line's own text, so an apostrophe in it is no open quote.
    const parsed = tokenize(line, { partial: true });
    const { words } = parsed;
    // So is an image prompt.
    const isChat = words[0] === "gpt" && (words[1] === "chat" || words[1] === "image");
    if (parsed.quote && !isChat) throw unclosed(parsed.quote);
    if (!words.length) return;
    const [name, ...rest] = words;
    if (name === "gpt") await gpt(rest, app, { ...parsed, line });
    else if (name === "user") await user(rest, app);
    else if (name === "console") {
      noArguments("console", rest);
      term.print("opening the console…", "dim");
      window.location.assign("/console");
    } else if (name === "clear") {
      noArguments("clear", rest);
      term.clear();
    } else if (name === "history") history(rest, app);
    else if (name === "help") help(rest, app);
    else unknown(name, line);
  } catch (err) {
    if (err instanceof UsageError) term.error(err.message, err.hint);
    else if (err instanceof ApiError) term.error(err.message, explain(err, app));
    else {
      term.error(`something went wrong in the page: ${err.message || err}`, "reload the page; if it persists, report it");
      console.warn(err);
    }
  }
  term.grew();
}

function noArguments(command, rest) {
  if (rest.length) throw new UsageError(`${command} takes no arguments (got "${rest.join(" ")}")`, `just type: ${command}`);
}

function unknown(name, line) {
  const near = closest(name, [...TOP, ...GPT_SUBCOMMANDS, ...USER_SUBCOMMANDS]);
  // A user command may hold a password: the rest of the line is never repeated for one.
  if (near === "user" || USER_SUBCOMMANDS.includes(near)) {
    throw new UsageError(`unknown command: ${name}`, `did you mean: ${near === "user" ? "user" : `user ${near}`}? (see: help user)`);
  }
  if (near && GPT_SUBCOMMANDS.includes(near) && !TOP.includes(near)) {
    throw new UsageError(`unknown command: ${name}`, `did you mean: gpt ${near}${line.slice(name.length)}?`);
  }
  if (near) {
    const guess = near === "gpt" ? `gpt${line.slice(name.length)}` : near;
    throw new UsageError(`unknown command: ${name}`, `did you mean: ${guess}? To ask the model: gpt chat ${line}`);
  }
  throw new UsageError(`unknown command: ${name}`, `to ask the model, type: gpt chat ${line} (help lists every command)`);
}

async function gpt(words, app, parsed) {
  const [sub, ...rest] = words;
  if (sub === undefined) {
    throw new UsageError(`gpt needs a subcommand: ${GPT_SUBCOMMANDS.join(", ")}`, "e.g. gpt chat hello (see: help gpt)");
  }
  switch (sub) {
    case "chat": return chat(rest, app, parsed);
    case "image": return image(rest, app, parsed);
    case "role": return role(rest, app);
    case "diy": return diy(rest, app);
    case "model": return model(rest, app);
    case "history": return conversationHistory(rest, app);
    case "reset": return reset(rest, app);
    case "token": return token(rest, app);
    case "key": return key(rest, app);
    case "usage": return usage(rest, app);
    default: {
      const near = closest(sub, GPT_SUBCOMMANDS);
      throw new UsageError(`gpt: unknown subcommand ${sub}`,
        near ? `did you mean: gpt ${near}?` : `to ask the model, type: gpt chat ${words.join(" ")}`);
    }
  }
}

/**
 * The message is the rest of the line as typed (line breaks, apostrophes and inner quotes
 * kept); only a message that is one quoted string loses its quotes.
 */
function chatMessage(rest, parsed) {
  const raw = parsed.line.slice(parsed.starts[parsed.words.length - rest.length]).trim();
  if (rest.length === 1 && !parsed.quote && /^["']/.test(raw) && raw.endsWith(raw[0])) return rest[0];
  return raw;
}

async function chat(words, app, parsed) {
  const { options, rest } = parseOptions(words, CHAT_OPTIONS, "gpt chat");
  if (!rest.length && parsed.quote) throw unclosed(parsed.quote);
  const message = rest.length ? chatMessage(rest, parsed) : "";
  if (!message.trim()) throw new UsageError("gpt chat needs a message", "e.g. gpt chat -r ikun hi");
  const roleName = options.role || app.settings.role;
  // Signed in, a role made in another browser since this page loaded is one more question away.
  if (app.user && !roleNames(app).includes(roleName)) await loadRoles(app).catch(() => {});
  const role = resolveRole(app, checkRole(roleName, app));
  let temperature;
  if (options.temperature !== undefined) {
    temperature = Number(options.temperature);
    if (!/^\d*\.?\d+$/.test(options.temperature) || !(temperature >= 0 && temperature <= 2)) {
      throw new UsageError(`gpt chat: -t needs a number from 0 to 2, not "${options.temperature}"`, "e.g. gpt chat -t 0.7 hello");
    }
  }
  const model = options.model || app.settings.model || "";
  if (model.length > 200) throw new UsageError("gpt chat: the model name is too long", "see: gpt model");
  await runChat(app, { message, role, temperature, model });
}

/** The option an option word names (-n, --number, -n2, --number=2), and its inline value. */
function imageOption(word) {
  const long = /^--([a-z]+)(?:=(.*))?$/.exec(word);
  if (long) {
    const option = IMAGE_OPTIONS.find((o) => o.long === long[1]);
    return option ? { option, inline: long[2] === undefined ? null : long[2] } : null;
  }
  const short = /^-([a-zA-Z])(.*)$/.exec(word);
  const option = short && IMAGE_OPTIONS.find((o) => o.short === short[1]);
  return option ? { option, inline: short[2] || null } : null;
}

function looksLikeOption(word) {
  return /^--?[a-zA-Z]/.test(word);
}

/**
 * `gpt image` words -> {prompt, options}: options before the prompt (up to `--`) and after
 * it; the prompt is the line's own text between them (quotes and apostrophes kept, a prompt
 * that is one quoted string loses its quotes). An unknown option at either end is refused.
 */
function imageArgs(rest, parsed) {
  const usage = `usage: ${IMAGE_USAGE}`;
  const options = {};
  const take = (found, value, word) => {
    if (value === undefined || value === null || value === "") {
      throw new UsageError(`gpt image: option ${word} needs a ${found.option.valueName}`, usage);
    }
    options[found.option.key] = value;
  };
  let first = 0;
  while (first < rest.length) {
    const word = rest[first];
    if (word === "--") {
      first += 1;
      break;
    }
    if (!looksLikeOption(word)) break;
    const found = imageOption(word);
    if (!found) throw new UsageError(`gpt image: unknown option ${word} (options: -n, -s)`, usage);
    if (found.inline !== null) take(found, found.inline, word);
    else take(found, rest[first + 1], word);
    first += found.inline !== null ? 1 : 2;
  }
  let last = rest.length; // the prompt ends before rest[last]
  while (last > first) {
    const word = rest[last - 1];
    const found = imageOption(word);
    if (found && found.inline !== null) {
      take(found, found.inline, word);
      last -= 1;
      continue;
    }
    const before = last - 2 >= first ? rest[last - 2] : "";
    const named = before ? imageOption(before) : null;
    if (named && named.inline === null) {
      take(named, word, before);
      last -= 2;
      continue;
    }
    if (found) take(found, undefined, word); // its value is missing: refused
    const unknown = [word, before].find(looksLikeOption);
    if (unknown) throw new UsageError(`gpt image: unknown option ${unknown} (options: -n, -s)`, usage);
    break;
  }
  let prompt = "";
  if (last > first) {
    const offset = parsed.words.length - rest.length;
    const from = parsed.starts[offset + first];
    const to = last < rest.length ? parsed.starts[offset + last] : parsed.line.length;
    prompt = parsed.line.slice(from, to).trim();
    if (last - first === 1 && /^["']/.test(prompt) && prompt.endsWith(prompt[0]) && prompt.length > 1) prompt = rest[first];
  }
  return { prompt, options };
}

async function image(words, app, parsed) {
  const usage = `usage: ${IMAGE_USAGE}`;
  const { prompt, options } = imageArgs(words, parsed);
  if (!prompt.trim()) throw new UsageError("gpt image needs a prompt: what to draw", "e.g. gpt image a lighthouse at night -n 2");
  let number = 1;
  if (options.number !== undefined) {
    if (!/^[1-5]$/.test(options.number)) throw new UsageError(`gpt image: -n needs a number from 1 to 5, not "${options.number}"`, usage);
    number = Number(options.number);
  }
  let size = "256x256";
  if (options.size !== undefined) {
    const side = /^(\d+)(?:x(\d+))?$/.exec(options.size);
    if (!side || !IMAGE_SIZES.includes(side[1]) || (side[2] && side[2] !== side[1])) {
      throw new UsageError(`gpt image: -s needs a size of 256, 512 or 1024, not "${options.size}"`, usage);
    }
    size = `${side[1]}x${side[1]}`;
  }
  await runImage(app, { prompt, number, size });
}

async function role(words, app) {
  const { term } = app;
  if (words.length > 1) throw new UsageError("gpt role takes one role name", "e.g. gpt role ikun");
  await loadRoles(app);
  if (!words.length) {
    const list = term.block("role-list", null, "dl");
    for (const name of serverRoleNames(app)) {
      const info = app.roles.find((r) => r.name === name && !r.own);
      const dt = document.createElement("dt");
      dt.textContent = name === app.settings.role ? `${name} *` : name;
      const dd = document.createElement("dd");
      dd.textContent = info ? info.description || "(no description)" : "no template: the model as it is";
      // A role may name its model: asked for unless `gpt model` or -m names another.
      if (info && typeof info.model === "string" && info.model) dd.textContent += ` · model: ${info.model}`;
      list.append(dt, dd);
    }
    const own = ownRoleList(app);
    if (own) {
      term.print(`Your own roles (gpt diy, ${ownRoleStore(app).where}):`, "heading own-heading");
      term.output.appendChild(own);
    }
    term.print("* is the default role. Set it: gpt role <name> · once: gpt chat -r <name> <message>", "dim");
    if (!own) term.print("Make a role of your own: gpt diy (see: help gpt diy)", "dim");
    return;
  }
  const names = roleNames(app);
  const name = checkRole(words[0], app);
  if (!names.includes(name)) {
    throw new UsageError(`there is no role "${name}"`, `roles: ${names.join(", ")}`);
  }
  const chosen = resolveRole(app, name);
  settings.set({ role: name });
  app.settings.role = name;
  term.setRole(name);
  const count = conversations.get(chosen.key).length;
  term.print(`default role: ${name}${chosen.own ? " (your own)" : ""}` +
    (count ? ` (its conversation has ${count} messages; gpt reset forgets them)` : ""), "ok");
}

function model(words, app) {
  const { term } = app;
  if (words.length > 1) throw new UsageError("gpt model takes one model name", "e.g. gpt model gpt-4o-mini");
  const serverModel = (app.health && app.health.model) || "";
  if (!words.length) {
    if (app.settings.model) term.print(`model: ${app.settings.model}`);
    else term.print(`model: ${serverModel || "the server's default"}${serverModel ? " (the server's default)" : ""}`);
    term.print("Set it: gpt model <name> · back to the server's: gpt model --default", "dim");
    return;
  }
  const name = words[0];
  if (name === "--default" || name === "default") {
    settings.set({ model: "" });
    app.settings.model = "";
    term.print(`model: the server's default${serverModel ? ` (${serverModel})` : ""}`, "ok");
    return;
  }
  if (name.startsWith("-")) throw new UsageError(`gpt model: unknown option ${name}`, "see: help gpt model");
  if (name.length > 200) throw new UsageError("gpt model: the name is too long", "model names are short, e.g. gpt-4o-mini");
  settings.set({ model: name });
  app.settings.model = name;
  term.print(`model: ${name}`, "ok");
}

/** The role named by -r (or the default), resolved to a server role or an own one. */
function roleOption(words, app, command) {
  const { options, rest } = parseOptions(words, [ROLE_OPTION], command);
  if (rest.length) throw new UsageError(`${command}: unexpected "${rest.join(" ")}"`, `to name a role: ${command} -r ikun`);
  return resolveRole(app, checkRole(options.role || app.settings.role, app));
}

function conversationHistory(words, app) {
  const { term } = app;
  const role = roleOption(words, app, "gpt history");
  const { name } = role;
  const messages = conversations.get(role.key);
  if (!messages.length) {
    term.print(`role ${name} has no conversation yet`, "dim");
    return;
  }
  term.print(`conversation of role ${name} (${messages.length} messages; gpt reset forgets it):`, "dim");
  for (const m of messages) {
    const block = term.block(`turn turn-${m.role}`);
    const who = document.createElement("div");
    who.className = "turn-who";
    who.textContent = m.role === "user" ? "you" : name;
    const body = document.createElement("div");
    body.className = m.role === "user" ? "turn-text" : "answer markdown";
    block.append(who, body);
    if (m.role === "user") body.textContent = m.content;
    else {
      const view = new MarkdownView(body);
      view.append(m.content);
      view.finish();
    }
  }
}

function reset(words, app) {
  const role = roleOption(words, app, "gpt reset");
  const { name } = role;
  const count = conversations.get(role.key).length;
  conversations.reset(role.key);
  app.term.print(count ? `forgot the ${count} messages of role ${name}` : `role ${name} had no conversation to forget`, "ok");
}

function token(words, app) {
  const { term } = app;
  if (words.length > 1) throw new UsageError("gpt token takes one token", "e.g. gpt token abc123 (or --clear)");
  if (!words.length) {
    term.print(app.settings.token ? `a proxy token is set (…${app.settings.token.slice(-4)})` : "no proxy token is set");
    return;
  }
  const value = words[0] === "--clear" ? "" : words[0];
  settings.set({ token: value });
  app.settings.token = value;
  term.print(value ? "proxy token set (kept in this browser's storage)" : "proxy token cleared", "ok");
}

function history(words, app) {
  const { term } = app;
  if (words.length === 1 && words[0] === "-c") {
    commandStore.clear();
    term.history = [];
    term.historyIndex = 0;
    term.print("command history forgotten", "ok");
    return;
  }
  if (words.length) throw new UsageError(`history: unexpected "${words.join(" ")}"`, "history lists the commands; history -c forgets them");
  const list = term.history;
  if (!list.length) {
    term.print("no commands yet", "dim");
    return;
  }
  const block = term.block("history-list", null, "ol");
  const first = Math.max(0, list.length - 100);
  block.start = first + 1;
  for (const line of list.slice(first)) {
    const li = document.createElement("li");
    li.textContent = line;
    block.appendChild(li);
  }
}

function findCommand(words) {
  const name = words.join(" ");
  return COMMANDS.find((c) => c.name === name) || COMMANDS.find((c) => c.name === `gpt ${name}`);
}

function help(words, app) {
  const { term } = app;
  if (!words.length) {
    term.print("Commands:", "heading");
    const list = term.block("help-list", null, "dl");
    for (const command of COMMANDS) addTerm(list, command.usage, command.about);
    term.print("Keys:", "heading");
    const keys = term.block("help-list keys", null, "dl");
    for (const [key, about] of KEYS) addTerm(keys, key, about);
    term.print("More on one command: help <command>, e.g. help gpt chat", "dim");
    return;
  }
  if (words.length === 1 && words[0] === "gpt") {
    term.print(GPT_COMMAND.usage, "heading");
    term.print(GPT_COMMAND.about);
    const list = term.block("help-list", null, "dl");
    for (const command of COMMANDS.filter((c) => c.name.startsWith("gpt "))) addTerm(list, command.usage, command.about);
    return;
  }
  if (words.length === 1 && words[0] === "user") {
    const group = COMMANDS.filter((c) => c.name === "user" || c.name.startsWith("user "));
    term.print(group[0].usage, "heading");
    term.print(group[0].about);
    const list = term.block("help-list", null, "dl");
    for (const command of group.slice(1)) addTerm(list, command.usage, command.about);
    return;
  }
  const command = findCommand(words);
  if (!command) throw new UsageError(`help: no command "${words.join(" ")}"`, "help lists every command");
  term.print(command.usage, "heading");
  term.print(command.about);
  if (command.options) {
    const list = term.block("help-list", null, "dl");
    for (const [flag, about] of command.options) addTerm(list, flag, about);
  }
  for (const example of command.examples || []) term.print(`e.g. ${example}`, "dim");
}

function addTerm(list, name, about) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = about;
  list.append(dt, dd);
}

function closest(word, list) {
  let best = null;
  let bestDistance = Math.max(2, Math.floor(word.length / 3)) + 1;
  for (const candidate of list) {
    const d = distance(word.toLowerCase(), candidate);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best;
}

function distance(a, b) {
  // Levenshtein, with a swap of two neighbours counted as one edit ("gtp" -> "gpt").
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}
