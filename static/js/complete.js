// Tab completion: the word before the caret, completed from the commands, their options, the
// role names (the server's and the user's own) and the ids of the keys the page has listed.
// It asks the network nothing.

import { optionName, parseOptions, tokenize } from "./args.js";
import { CHAT_OPTIONS, GPT_SUBCOMMANDS, IMAGE_OPTIONS, IMAGE_SIZES, TOP, USER_SUBCOMMANDS } from "./commands.js";
import { DIY_OPTIONS } from "./diy.js";
import { KEY_ACTIONS, KEY_CREATE_OPTIONS } from "./keys.js";
import { ownRoleStore } from "./ownroles.js";
import { roleNames } from "./roles.js";
import { USAGE_OPTIONS } from "./usage.js";
import { LOGIN_OPTIONS, REGISTER_OPTIONS } from "./user.js";

/** Complete the word before the caret: {text: the new text before the caret, choices}. */
export function complete(before, app) {
  const { words, open, quote, start } = tokenize(before, { partial: true });
  if (quote) return { text: before, choices: [] }; // inside a quoted message
  const current = open ? words.pop() : "";
  const choices = candidates(words, current, app).filter((c) => c.startsWith(current));
  if (!choices.length) return { text: before, choices: [] };
  const insert = choices.length === 1 ? `${choices[0]} ` : commonPrefix(choices);
  return { text: before.slice(0, start) + insert, choices };
}

function candidates(words, current, app) {
  const [first, second] = words;
  const last = words[words.length - 1];
  const models = [app.settings.model, app.health && app.health.model].filter(Boolean);
  if (!words.length) return TOP;
  if (first === "help") {
    if (words.length === 1) return TOP;
    if (words.length === 2 && second === "gpt") return GPT_SUBCOMMANDS;
    if (words.length === 2 && second === "user") return USER_SUBCOMMANDS;
    return [];
  }
  if (first === "history") return words.length === 1 ? ["-c"] : [];
  if (first === "user") {
    if (words.length === 1) return USER_SUBCOMMANDS;
    if (second === "login") return optionCandidates(LOGIN_OPTIONS, last, current);
    if (second === "register") return optionCandidates(REGISTER_OPTIONS, last, current);
    return [];
  }
  if (first !== "gpt") return [];
  if (words.length === 1) return GPT_SUBCOMMANDS;
  if (last === "-r" || last === "--role") return roleNames(app);
  if (last === "-m" || last === "--model") return [...new Set(models)];
  switch (second) {
    case "chat": {
      const { rest } = safeOptions(words.slice(2));
      if (rest === null || rest.length) return []; // the message has begun
      if (last === "-t" || last === "--temperature") return [];
      if (current.startsWith("--")) return CHAT_OPTIONS.map((o) => `--${o.long}`);
      return current === "" || current.startsWith("-") ? CHAT_OPTIONS.map((o) => `-${o.short}`) : [];
    }
    case "image": {
      if (last === "-s" || last === "--size") return IMAGE_SIZES;
      if (last === "-n" || last === "--number") return ["1", "2", "3", "4", "5"];
      if (current.startsWith("--")) return IMAGE_OPTIONS.map((o) => `--${o.long}`);
      return current.startsWith("-") ? IMAGE_OPTIONS.map((o) => `-${o.short}`) : [];
    }
    case "role": return words.length === 2 ? roleNames(app) : [];
    case "model": return words.length === 2 ? [...new Set([...models, "--default"])] : [];
    case "history":
    case "reset": return words.length === 2 ? ["-r"] : [];
    case "token": return words.length === 2 ? ["--clear"] : [];
    case "diy": return diyCandidates(words, last, current, app);
    case "usage": return optionCandidates(USAGE_OPTIONS, last, current);
    case "key": {
      if (words.length === 2) return KEY_ACTIONS;
      if (words[2] === "create") return optionCandidates(KEY_CREATE_OPTIONS, last, current);
      return words[2] === "revoke" && words.length === 3 ? app.keyIds || [] : [];
    }
    default: return [];
  }
}

/** The options of `spec`, unless the word before the caret is one that takes a value. */
function optionCandidates(spec, last, current) {
  const option = spec.find((o) => optionName(o) === last || `--${o.long}` === last);
  if (option && option.value) return []; // its value: nothing to offer
  if (current.startsWith("--")) return spec.map((o) => `--${o.long}`);
  return current === "" || current.startsWith("-") ? spec.map(optionName) : [];
}

function diyCandidates(words, last, current, app) {
  if (["--show", "--edit", "--export", "--delete"].includes(last)) return ownRoleStore(app).list().map((r) => r.keyword);
  return optionCandidates(DIY_OPTIONS, last, current);
}

function safeOptions(words) {
  try {
    return parseOptions(words, CHAT_OPTIONS, "gpt chat");
  } catch {
    return { rest: null };
  }
}

function commonPrefix(list) {
  let prefix = list[0];
  for (const item of list) while (!item.startsWith(prefix)) prefix = prefix.slice(0, -1);
  return prefix;
}
