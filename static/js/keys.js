// `gpt key create|list|revoke`: the signed-in user's own API keys (GET/POST /api/keys,
// DELETE /api/keys/<id>), for SDKs, chat apps and scripts. A new key is shown once, set apart
// with a Copy button and a note to store it; the page keeps it nowhere (no storage, no
// history), and the server keeps only its hash. The server manages keys only for a signed-in
// session, so these commands send no proxy token.

import { UsageError, parseOptions } from "./args.js";
import { createKey, listKeys, revokeKey } from "./api.js";
import { SIGN_IN_HINT } from "./account.js";

export const KEY_ACTIONS = ["create", "list", "revoke"];
export const KEY_CREATE_OPTIONS = [
  { short: "n", long: "name", key: "name", value: true, valueName: "name", example: 'gpt key create -n "my laptop"' },
  { long: "days", key: "days", value: true, valueName: "number of days", example: "gpt key create --days 30" },
  { long: "models", key: "models", value: true, valueName: "model names, comma-separated", example: "gpt key create --models gpt-4o-mini,gpt-4o" },
];
const MAX_DAYS = 3650;

export async function key(words, app) {
  const [action, ...rest] = words;
  if (app.auth === "open") {
    throw new UsageError("this server has no accounts, so no keys: it asks nobody for one",
      "an SDK or chat app can use it as it is (one that insists on a key may be given any text)");
  }
  if (app.auth === "token") {
    throw new UsageError("this server has no accounts, so no keys: it asks for its proxy token",
      "an SDK or chat app sends the proxy token as its key (ask the operator for it)");
  }
  switch (action) {
    case "create": return create(rest, app);
    case "list": return list(rest, app);
    case "revoke": return revoke(rest, app);
    case undefined:
      throw new UsageError(`gpt key needs one of: ${KEY_ACTIONS.join(", ")}`, "e.g. gpt key create -n laptop (see: help gpt key)");
    default:
      throw new UsageError(`gpt key: unknown action ${action}`, `gpt key ${KEY_ACTIONS.join(" | ")} (see: help gpt key)`);
  }
}

function requireSignedIn(app) {
  if (!app.user) throw new UsageError("keys belong to an account: sign in first", SIGN_IN_HINT);
}

function day(iso) {
  return typeof iso === "string" && iso ? iso.slice(0, 10) : "";
}

async function create(words, app) {
  requireSignedIn(app);
  const { options, rest } = parseOptions(words, KEY_CREATE_OPTIONS, "gpt key create");
  if (rest.length) {
    throw new UsageError(`gpt key create: unexpected "${rest.join(" ")}" (a name with spaces needs quotes)`, 'e.g. gpt key create -n "my laptop"');
  }
  const body = {};
  if (options.name !== undefined) body.name = options.name.trim();
  if (options.days !== undefined) {
    const days = Number(options.days);
    if (!/^\d*\.?\d+$/.test(options.days) || !(days > 0 && days <= MAX_DAYS)) {
      throw new UsageError(`gpt key create: --days needs a number of days from 0 to ${MAX_DAYS}, not "${options.days}"`, "e.g. gpt key create --days 30");
    }
    body.expires_days = days;
  }
  if (options.models !== undefined) {
    const models = options.models.split(",").map((m) => m.trim()).filter(Boolean);
    if (!models.length) throw new UsageError("gpt key create: --models needs model names", "e.g. --models gpt-4o-mini,gpt-4o");
    body.models = models;
  }
  const made = await createKey(body);
  remember(app, made.id);
  const { term } = app;
  term.print(`made key ${made.id} "${made.name}"` + (made.expires ? `, expires ${day(made.expires)}` : "") +
    (made.models ? `, for ${made.models.join(", ")} only` : ""), "ok");
  term.output.appendChild(newKeyBlock(made.key));
  term.print("This is the only time the key is shown: copy it now and keep it somewhere safe (a password manager). " +
    "The server keeps only a fingerprint of it; lost, it cannot be shown again: make a new one and revoke this one.", "note");
  term.print(`Use it as Authorization: Bearer <key> (an OpenAI SDK: api_key, base URL ${location.origin}/v1) · ` +
    `list: gpt key list · revoke: gpt key revoke ${made.id}`, "dim");
}

/** The new key, selectable as one piece, with a button that copies it. */
function newKeyBlock(secret) {
  const block = document.createElement("div");
  block.className = "new-key";
  const code = document.createElement("code");
  code.textContent = secret;
  const button = document.createElement("button");
  button.type = "button";
  button.className = "copy";
  button.textContent = "Copy";
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(secret);
      button.textContent = "Copied";
    } catch {
      // No clipboard here (an http page that is not localhost, say): select it for Ctrl+C.
      window.getSelection().selectAllChildren(code);
      button.textContent = "Selected: Ctrl+C copies";
    }
  });
  block.append(code, button);
  return block;
}

/** Ids of keys this page has seen, for Tab after `gpt key revoke` (Tab asks the network nothing). */
function remember(app, ...ids) {
  app.keyIds = [...new Set([...(app.keyIds || []), ...ids.map(String)])];
}

async function list(words, app) {
  requireSignedIn(app);
  if (words.length) throw new UsageError(`gpt key list takes no arguments (got "${words.join(" ")}")`, "just type: gpt key list");
  const { term } = app;
  const answer = await listKeys();
  const keys = Array.isArray(answer && answer.data) ? answer.data : [];
  app.keyIds = keys.filter((k) => !k.revoked).map((k) => String(k.id));
  if (!keys.length) {
    term.print("you have no keys yet", "dim");
    term.print('make one: gpt key create -n "my laptop"', "dim");
    return;
  }
  term.print("Your API keys:", "heading");
  const block = term.block("help-list key-list", null, "dl");
  for (const k of keys) {
    const dt = document.createElement("dt");
    dt.textContent = `${k.id}  ${k.name}`;
    const dd = document.createElement("dd");
    const facts = [k.hint, `made ${day(k.created)}`, k.last_used ? `last used ${day(k.last_used)}` : "never used",
      k.expires ? `expires ${day(k.expires)}` : "", k.models ? `models: ${k.models.join(", ")}` : "any model",
      k.revoked ? `revoked ${day(k.revoked)}` : ""];
    dd.textContent = facts.filter(Boolean).join(" · ");
    if (k.revoked) dt.classList.add("revoked");
    block.append(dt, dd);
  }
  term.print("Revoke one: gpt key revoke <id> · a new one: gpt key create", "dim");
}

async function revoke(words, app) {
  requireSignedIn(app);
  if (words.length !== 1 || !/^\d{1,15}$/.test(words[0])) {
    throw new UsageError("gpt key revoke needs the id of one key (a number)", "the ids are in: gpt key list");
  }
  const gone = await revokeKey(words[0]);
  app.keyIds = (app.keyIds || []).filter((id) => id !== words[0]);
  app.term.print(`revoked key ${gone.id} "${gone.name}" (${gone.hint}): it stops working within a second, everywhere`, "ok");
}
