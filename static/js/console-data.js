// What the console asks the server, and how: the JSON routes of CONSOLE_CONTRACT.md (the
// account and admin APIs), through api.js's requestJSON (same-origin fetch: the session cookie
// goes along, and writes pass the server's same-origin check). A server older than the console
// routes (no /api/console/me, /api/usage/series or /api/admin/ledger) is served from the
// routes it has, where they can say the same: who is signed in from the user protocol, the
// spend by model from /api/usage, the ledger from /api/admin/usage. Routes with no older
// equivalent (the overview, the upstreams) say so on their page.

import { ApiError, asksForCredentials, postEnvelope, requestJSON } from "./api.js";

export { ApiError };

const missing = new Set(); // routes this server does not have

/** True for "this route does not exist here" (not "this user or key does not exist"). */
export function isMissingRoute(err) {
  return err instanceof ApiError && err.status === 404 && (err.code === "not_found" || err.code === "");
}

async function withFallback(route, call, fallback) {
  if (!missing.has(route)) {
    try {
      return await call();
    } catch (err) {
      if (!isMissingRoute(err) || !fallback) throw err;
      missing.add(route);
    }
  }
  return fallback();
}

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
export function me() {
  return withFallback("me", () => get("/api/console/me"), async () => {
    let user = null;
    try {
      user = await postEnvelope("/api/user/current");
    } catch (err) {
      if (!(err instanceof ApiError) || err.status !== 401) throw err;
    }
    let auth = user ? "users" : "";
    if (!user && !(await asksForCredentials())) auth = "open";
    else if (!user) {
      try {
        await get("/api/limits"); // answered without a credential only with AUTH=users or open
        auth = "users";
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) auth = "token";
        else throw err;
      }
    }
    return { user, auth, tz: null, now: new Date().toISOString() };
  });
}

export function signIn(username, password) {
  return postEnvelope("/api/user/login", { username, password });
}

export function signOut() {
  return postEnvelope("/api/user/logout");
}

/** The last `days` days up to today, as YYYY-MM-DD (in the viewer's zone: the fallback's). */
export function lastDays(days, today = new Date()) {
  const out = [];
  for (let i = days - 1; i >= 0; i--) {
    const d = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i));
    out.push(d.toISOString().slice(0, 10));
  }
  return out;
}

function daysBetween(from, to) {
  const out = [];
  const start = new Date(`${from}T00:00:00Z`);
  const end = new Date(`${to}T00:00:00Z`);
  for (let d = start; d <= end && out.length <= 400; d = new Date(d.getTime() + 86400000)) {
    out.push(d.toISOString().slice(0, 10));
  }
  return out;
}

/** Series from /api/usage's by_day rows (by model; days in UTC), in the series route's shape. */
function seriesFromByDay(answer, from, to) {
  const days = daysBetween(from, to);
  const index = new Map(days.map((d, i) => [d, i]));
  const byName = new Map();
  const zero = () => days.map(() => 0);
  for (const row of answer.by_day || []) {
    if (!index.has(row.day)) continue;
    let s = byName.get(row.model);
    if (!s) {
      s = { name: row.model, id: null, requests: zero(), prompt_tokens: zero(), completion_tokens: zero(), tokens: zero(), cost: zero() };
      byName.set(row.model, s);
    }
    const i = index.get(row.day);
    s.requests[i] += row.requests;
    s.prompt_tokens[i] += row.prompt_tokens;
    s.completion_tokens[i] += row.completion_tokens;
    s.tokens[i] += row.prompt_tokens + row.completion_tokens;
    s.cost[i] += Number(row.cost);
  }
  const series = [...byName.values()];
  const sum = (field) => series.reduce((t, s) => t + s[field].reduce((a, b) => a + Number(b), 0), 0);
  return {
    from, to, tz: "UTC", by: "model", days, series,
    totals: { requests: sum("requests"), tokens: sum("tokens"), prompt_tokens: sum("prompt_tokens"),
      completion_tokens: sum("completion_tokens"), cost: sum("cost").toFixed(6) },
  };
}

/** The caller's own usage per day, split `by` model or key. */
export function usageSeries({ from, to, by }) {
  return withFallback("usage-series", () => get(`/api/usage/series${query({ from, to, by })}`), async () => {
    if (by !== "model") {
      throw new ApiError(`this server cannot split usage by ${by} yet (it has no /api/usage/series): by model only`);
    }
    const days = daysBetween(from, to).length;
    const answer = await get(`/api/usage${query({ days: Math.min(400, days + 1) })}`);
    return seriesFromByDay(answer, from, to);
  });
}

/** Everyone's usage per day (admin), split `by` model, key or user. */
export function adminSeries({ from, to, by, user, key }) {
  return get(`/api/admin/usage/series${query({ from, to, by, user, key })}`);
}

export const overview = () => get("/api/admin/overview");
export const upstreams = () => get("/api/admin/upstreams");

/** The caller's budgets with what is left (from /api/usage). */
export async function myUsage() {
  return get("/api/usage?days=1");
}

/** Users, optionally those whose name holds `q` (filtered here as well, for an older server). */
export async function users(q = "") {
  const answer = await get(`/api/admin/users${query({ q })}`);
  const list = Array.isArray(answer.data) ? answer.data : [];
  const needle = q.trim().toLowerCase();
  return needle ? list.filter((u) => String(u.username).toLowerCase().includes(needle)) : list;
}

const LEDGER_FILTERS = ["from", "to", "user", "key", "model", "door", "outcome"];

function ledgerQuery(filter) {
  const params = {};
  for (const name of LEDGER_FILTERS) params[name] = filter[name];
  return params;
}

/** A page of the ledger, newest first: {data, page, per_page, has_more}. */
export function ledger(filter, page = 1, perPage = 50) {
  return withFallback("ledger", () => get(`/api/admin/ledger${query({ ...ledgerQuery(filter), page, per_page: perPage })}`),
    async () => {
      const { from, to, user, key } = filter;
      const answer = await get(`/api/admin/usage${query({ from, to, user, key, limit: 10000 })}`);
      const rows = (answer.data || []).reverse().filter((row) =>
        (!filter.model || row.model === filter.model) && (!filter.door || row.door === filter.door) &&
        (!filter.outcome || row.outcome === filter.outcome));
      const start = (page - 1) * perPage;
      return { data: rows.slice(start, start + perPage), page, per_page: perPage, has_more: rows.length > start + perPage };
    });
}

/** Where the CSV of the filtered ledger is downloaded from. */
export function ledgerCsvUrl(filter) {
  if (missing.has("ledger")) {
    const { from, to, user, key } = filter;
    return `/api/admin/usage${query({ from, to, user, key, format: "csv" })}`;
  }
  return `/api/admin/ledger${query({ ...ledgerQuery(filter), format: "csv" })}`;
}
