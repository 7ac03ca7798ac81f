// The hint line under the prompt: the usage of the command (or `gpt` sub-command) being typed,
// and what it does, or what the option being typed means. Nothing for an empty line or a word
// that names no command. One pass over the line, no I/O: it runs as often as keys are typed.

import { tokenize } from "./args.js";
import { COMMANDS, GPT_COMMAND, GPT_SUBCOMMANDS, TOP, USER_SUBCOMMANDS } from "./commands.js";

/** The one name in `names` that `word` is, or (while it is being typed) begins; else null. */
function match(word, names, typing) {
  if (names.includes(word)) return word;
  if (!typing) return null;
  const found = names.filter((name) => name.startsWith(word));
  return found.length === 1 ? found[0] : null;
}

function findCommand(words, open) {
  const top = match(words[0], TOP, open && words.length === 1);
  if (top === null) return null;
  const byName = (name) => COMMANDS.find((c) => c.name === name) || null;
  if (top === "user") {
    const sub = words.length < 2 ? null : match(words[1], USER_SUBCOMMANDS, open && words.length === 2);
    return (sub && byName(`user ${sub}`)) || byName("user");
  }
  if (top !== "gpt") return byName(top);
  if (words.length < 2) return GPT_COMMAND;
  const sub = match(words[1], GPT_SUBCOMMANDS, open && words.length === 2);
  return (sub && byName(`gpt ${sub}`)) || GPT_COMMAND;
}

const parsedOptions = new WeakMap();

/** The options a command's help lists, as {names, value (takes one), text: [flag, about]}. */
function optionsOf(command) {
  if (!parsedOptions.has(command)) {
    parsedOptions.set(command, (command.options || []).map((text) => ({
      names: text[0].split(/[ ,]+/).filter((word) => word.startsWith("-")),
      value: text[0].includes("<"),
      text,
    })));
  }
  return parsedOptions.get(command);
}

/**
 * The option under the caret: the one being typed, or the one whose value is being typed.
 * Options end at the first word that is not one (a chat message begins there).
 */
function activeOption(command, args, open) {
  const options = optionsOf(command);
  const caret = open ? args.length - 1 : args.length; // the word being typed
  for (let i = 0; i < args.length && i <= caret; i++) {
    const word = args[i];
    if (word === "--" || !word.startsWith("-") || word === "-") return null;
    const name = word.startsWith("--") ? word.split("=")[0] : word.slice(0, 2);
    let option = options.find((o) => o.names.includes(name));
    if (!option && i === caret && word.startsWith("--")) {
      const found = options.filter((o) => o.names.some((n) => n.startsWith(word)));
      option = found.length === 1 ? found[0] : null;
    }
    if (!option) return null;
    const inline = word.includes("=") || (!word.startsWith("--") && word.length > 2);
    const end = option.value && !inline ? i + 1 : i;
    if (caret <= end) return option;
    i = end;
  }
  return null;
}

/** {usage, about} for the line typed so far, or null. */
export function usageHint(line) {
  const { words, open } = tokenize(line, { partial: true });
  if (!words.length) return null;
  const command = findCommand(words, open);
  if (!command) return null;
  let args = words.slice(command.name.split(" ").length);
  // A command of actions (gpt key create ...): the action is explained, and its options follow it.
  let action = null;
  if (command.actions && args.length && command.actions.includes(args[0])) {
    action = (command.options || []).find((o) => o[0].split(" ")[0] === args[0]) || null;
    if (args.length > 1 || !open) args = args.slice(1);
  }
  const option = args.length ? activeOption(command, args, open) : null;
  const about = option ? `${option.text[0]}: ${option.text[1]}` : action ? `${action[0]}: ${action[1]}` : command.about;
  return { usage: command.usage, about };
}
