// What the console asks the server, and how: the JSON routes of CONSOLE_CONTRACT.md (the
// account and admin APIs), through api.js's requestJSON (same-origin fetch: the session cookie
// goes along, and writes pass the server's same-origin check). The page and the routes ship
// together, so every route named here exists; a 404 means an unknown user or key, never a
// missing route. Lists that grow with the service (users, keys, the ledger) are asked for a
// page at a time: the server searches and cuts them.

import { ApiError, postEnvelope, requestJSON } from "./api.js";

export { ApiError };

export const get = (path) => requestJSON(path);
export const post = (path, body) => requestJSON(path, { method: "POST", body });
export const patch = (path, body) => requestJSON(path, { method: "PATCH", body });
export const remove = (path) => requestJSON(path, { method: "DELETE" });

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(name, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** {user: {id, username, admin} | null, auth, tz, now}. */
export const me = () => get("/api/console/me");

export function signIn(username, password) {
  return postEnvelope("/api/user/login", { username, password });
}

export function signOut() {
  return postEnvelope("/api/user/logout");
}

/** The caller's own usage per day, split `by` model or key. */
export function usageSeries({ from, to, by }) {
  return get(`/api/usage/series${query({ from, to, by })}`);
}

/** Everyone's usage per day (admin), split `by` model, key or user. */
export function adminSeries({ from, to, by, user, key }) {
  return get(`/api/admin/usage/series${query({ from, to, by, user, key })}`);
}

export const overview = () => get("/api/admin/overview");
export const upstreams = () => get("/api/admin/upstreams");

/** The caller's budgets with what is left (from /api/usage). */
export const myUsage = () => get("/api/usage?days=1");

/** A page of users whose name holds `q` (any case; the exact name first):
 * {data, page, per_page, has_more}. */
export function users({ q = "", page = 1, perPage = 50 } = {}) {
  return get(`/api/admin/users${query({ q: q.trim(), page, per_page: perPage })}`);
}

/** The user named `name` (any case), or null. */
export async function userNamed(name) {
  const answer = await users({ q: name, perPage: 1 });
  const found = answer.data[0];
  const same = (text) => text.trim().normalize("NFKC").toLowerCase();
  return found && same(found.username) === same(name) ? found : null;
}

/** A page of keys (with their owner's `username`): `user` an id or a name, `q` part of the
 * key's name: {data, page, per_page, has_more}. */
export function keys({ user = "", q = "", page = 1, perPage = 50 } = {}) {
  return get(`/api/admin/keys${query({ user: user.trim(), q: q.trim(), page, per_page: perPage })}`);
}

const LEDGER_FILTERS = ["from", "to", "user", "key", "model", "door", "outcome"];

function ledgerQuery(filter) {
  const params = {};
  for (const name of LEDGER_FILTERS) params[name] = filter[name];
  return params;
}

/** A page of the ledger, newest first: {data, page, per_page, has_more}. */
export function ledger(filter, page = 1, perPage = 50) {
  return get(`/api/admin/ledger${query({ ...ledgerQuery(filter), page, per_page: perPage })}`);
}

/** Where the CSV of the filtered ledger is downloaded from. */
export function ledgerCsvUrl(filter) {
  return `/api/admin/ledger${query({ ...ledgerQuery(filter), format: "csv" })}`;
}
