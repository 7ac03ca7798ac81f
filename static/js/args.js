// Splitting a command line into words (quotes group words) and reading options from them.

export class UsageError extends Error {
  constructor(message, hint = "") {
    super(message);
    this.name = "UsageError";
    this.hint = hint;
  }
}

/**
 * Words of a line, shell-like: whitespace separates; '...' keeps everything literally;
 * "..." keeps spaces and allows \" and \\; a backslash outside quotes escapes one character.
 * Returns {words, starts and ends (where each word begins in `line`, and where it ends: the
 * index after its last character, a closing quote included), open (the line ends inside a
 * word), quote (the quote left open at the end, or ""), start (where the last word begins)}.
 * An open quote is an error unless `partial` (Tab completion, a chat message's own text).
 */
export function tokenize(line, { partial = false } = {}) {
  const words = [];
  const starts = [];
  const ends = [];
  let word = "";
  let inWord = false;
  let quote = "";
  const begin = (i) => {
    if (!inWord) starts.push(i);
    inWord = true;
  };
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote === "'") {
      if (c === "'") quote = "";
      else word += c;
    } else if (quote === '"') {
      if (c === '"') quote = "";
      else if (c === "\\" && (line[i + 1] === '"' || line[i + 1] === "\\")) word += line[++i];
      else word += c;
    } else if (c === "'" || c === '"') {
      begin(i);
      quote = c;
    } else if (c === "\\" && i + 1 < line.length) {
      begin(i);
      word += line[++i];
    } else if (/\s/.test(c)) {
      if (inWord) {
        words.push(word);
        ends.push(i);
      }
      word = "";
      inWord = false;
    } else {
      begin(i);
      word += c;
    }
  }
  if (quote && !partial) throw unclosed(quote);
  if (inWord) {
    words.push(word);
    ends.push(line.length);
  }
  return { words, starts, ends, open: inWord, quote, start: inWord ? starts[starts.length - 1] : line.length };
}

export function unclosed(quote) {
  return new UsageError(`the ${quote === '"' ? "double" : "single"} quote is not closed`,
    `close it, e.g. gpt role ${quote}ikun${quote}`);
}

/** How an option is named in a message: its short form when it has one. */
export function optionName(option) {
  return option.short ? `-${option.short}` : `--${option.long}`;
}

/**
 * Read options from the front of `words` by `spec`: [{short: "r", long: "role", key, value: true}]
 * (`short` may be left out: then only --long works). Options come before the other words;
 * "--" ends them. Returns {options, rest}.
 */
export function parseOptions(words, spec, command) {
  const options = {};
  let i = 0;
  const known = spec.map(optionName).join(", ");
  for (; i < words.length; i++) {
    const word = words[i];
    if (word === "--") {
      i++;
      break;
    }
    if (!word.startsWith("-") || word === "-") break;
    let option;
    let inline = null;
    if (word.startsWith("--")) {
      const [name, ...value] = word.slice(2).split("=");
      option = spec.find((o) => o.long === name);
      if (value.length) inline = value.join("=");
    } else {
      option = spec.find((o) => o.short && o.short === word[1]);
      if (word.length > 2) inline = word.slice(2);
    }
    if (!option) {
      throw new UsageError(`${command}: unknown option ${word}` + (known ? ` (options: ${known})` : ""),
        `see: help ${command}`);
    }
    if (option.value) {
      const value = inline !== null ? inline : words[++i];
      if (value === undefined || value === "") {
        throw new UsageError(`${command}: option ${optionName(option)} needs a ${option.valueName || "value"}`,
          `e.g. ${option.example || `help ${command}`}`);
      }
      options[option.key] = value;
    } else {
      if (inline !== null) throw new UsageError(`${command}: option ${word} takes no value`, `see: help ${command}`);
      options[option.key] = true;
    }
  }
  return { options, rest: words.slice(i) };
}
