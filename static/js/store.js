// What the page remembers in localStorage: the command history, the settings, one
// conversation per role, and the user's own roles. Storage may be full or switched off: then
// the page forgets quietly, except an own role, whose save reports whether it was kept.

const PREFIX = "gpt-terminal:";
export const MAX_COMMANDS = 500;
export const MAX_STORED_MESSAGES = 60; // per role
export const MAX_SENT_MESSAGES = 24; // history sent with a question (the question included)
export const MAX_SENT_CHARS = 24000;

function read(key, fallback) {
  try {
    const raw = localStorage.getItem(PREFIX + key);
    return raw === null ? fallback : JSON.parse(raw);
  } catch {
    return fallback;
  }
}

function write(key, value) {
  try {
    localStorage.setItem(PREFIX + key, JSON.stringify(value));
    return true;
  } catch {
    return false;
  }
}

function remove(key) {
  try {
    localStorage.removeItem(PREFIX + key);
  } catch {
    // nothing to forget
  }
}

function isMessage(m) {
  return m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string";
}

export const commands = {
  load() {
    const list = read("history", []);
    return Array.isArray(list) ? list.filter((c) => typeof c === "string") : [];
  },
  add(line) {
    const list = this.load();
    if (list[list.length - 1] !== line) list.push(line);
    write("history", list.slice(-MAX_COMMANDS));
  },
  clear() {
    remove("history");
  },
};

const DEFAULT_SETTINGS = { role: "default", model: "", token: "" };

export const settings = {
  load() {
    const value = read("settings", {});
    return { ...DEFAULT_SETTINGS, ...(value && typeof value === "object" ? value : {}) };
  },
  set(changes) {
    write("settings", { ...this.load(), ...changes });
  },
};

export const conversations = {
  get(role) {
    const list = read(`conversation:${role}`, []);
    return Array.isArray(list) ? list.filter(isMessage) : [];
  },
  append(role, ...messages) {
    let list = this.get(role).concat(messages.filter(isMessage));
    list = list.slice(-MAX_STORED_MESSAGES);
    while (list.length && list[0].role !== "user") list.shift();
    if (!write(`conversation:${role}`, list)) {
      // Full: keep the newer half rather than nothing.
      write(`conversation:${role}`, list.slice(-Math.floor(list.length / 2)));
    }
  },
  reset(role) {
    remove(`conversation:${role}`);
  },
};

const OWN_ROLES_VERSION = 1;
function isOwnRole(r) {
  return r && typeof r === "object" && typeof r.keyword === "string" && r.keyword !== ""
    && typeof r.name === "string" && typeof r.description === "string"
    && typeof r.definition === "string" && r.definition.trim() !== "";
}

/**
 * The user's own roles (`gpt diy`), under "own-roles" as
 * {"version": 1, "roles": [{keyword, name, description, definition, created, edited?}]}, oldest
 * first.
 * Read on every use, so another tab's changes are seen; entries that are not whole are skipped.
 */
export const ownRoles = {
  list() {
    const value = read("own-roles", null);
    if (!value || value.version !== OWN_ROLES_VERSION || !Array.isArray(value.roles)) return [];
    const roles = new Map();
    for (const r of value.roles) if (isOwnRole(r) && !roles.has(r.keyword)) roles.set(r.keyword, r);
    return [...roles.values()];
  },
  get(keyword) {
    return this.list().find((r) => r.keyword === keyword) || null;
  },
  /** Keep `role` (replacing one of the same keyword); false if the browser would not store it. */
  save(role) {
    const roles = this.list();
    const at = roles.findIndex((r) => r.keyword === role.keyword);
    if (at >= 0) roles[at] = role; // an edited role keeps its place in the lists
    else roles.push(role);
    return write("own-roles", { version: OWN_ROLES_VERSION, roles });
  },
  remove(keyword) {
    const roles = this.list();
    const kept = roles.filter((r) => r.keyword !== keyword);
    if (kept.length === roles.length) return false;
    return write("own-roles", { version: OWN_ROLES_VERSION, roles: kept });
  },
};

/**
 * The messages to send: the conversation so far plus the new question, bounded by count and
 * characters from the oldest end, always starting with a user message.
 */
export function boundedHistory(history, question) {
  const out = [{ role: "user", content: question }];
  let chars = question.length;
  for (let i = history.length - 1; i >= 0 && out.length < MAX_SENT_MESSAGES; i--) {
    chars += history[i].content.length;
    if (chars > MAX_SENT_CHARS) break;
    out.unshift(history[i]);
  }
  while (out.length > 1 && out[0].role !== "user") out.shift();
  return out;
}
