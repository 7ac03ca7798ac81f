// The console's admin views: the overview (today and this month, the service's budgets, the
// top users, keys and models, everyone's usage per day), users (search, make, disable, reset a
// password, make admin, invites), every key, every budget (make, change, delete), the ledger
// (filters, pages, the filter as CSV) and the upstreams (breaker, errors, latency). Only
// admins are offered these; the server refuses their routes to anyone else in any case.

import { copyButton, failure, field, h, say, table } from "./console-dom.js";
import * as data from "./console-data.js";
import { count, duration, money, percent, when } from "./console-format.js";
import { budgetBar, keyForm, keyTable, usageView } from "./console-user.js";

const REFRESH_MS = 5000; // live pages (overview, budgets, upstreams) ask again this often

/** Ask again every REFRESH_MS while the page is shown (and never two at once). */
function live(ctx, refresh) {
  let busy = false;
  const timer = setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try {
      await refresh();
    } catch {
      // the next round tries again; the page keeps what it showed
    } finally {
      busy = false;
    }
  }, REFRESH_MS);
  ctx.onLeave(() => clearInterval(timer));
}

function refreshButton(refresh, status) {
  return h("button", {
    type: "button", class: "refresh",
    onclick: async () => {
      try {
        await refresh();
        if (status) say(status, `updated ${new Date().toLocaleTimeString()}`);
      } catch (err) {
        if (status) say(status, err.message, "error");
      }
    },
  }, "Refresh");
}

function notHere(what) {
  return h("p", { class: "failure" }, `This server does not have ${what} yet (an older version): update it to see this page.`);
}

async function userNames() {
  const list = await data.users();
  return new Map(list.map((u) => [u.id, u.username]));
}

function namedBudget(names, keys) {
  return (b) => {
    if (b.scope === "user") return `user ${names.get(b.subject_id) ?? `#${b.subject_id}`}`;
    if (b.scope === "key") {
      const k = keys.get(b.subject_id);
      return k ? `key ${b.subject_id} (${k.name}, ${names.get(k.user_id) ?? `user #${k.user_id}`})` : `key ${b.subject_id}`;
    }
    return b.scope;
  };
}

// ---- overview -----------------------------------------------------------------------------

export async function overviewPage(ctx) {
  const body = h("div", { class: "overview" });
  const status = h("p", { class: "status", role: "status" });
  async function refresh() {
    const o = await data.overview();
    const t = o.today || {};
    const m = o.month || {};
    body.replaceChildren(
      h("dl", { class: "cards" },
        card("Spend today", money(t.spend), "overview-spend-today"),
        card("Spend this month", money(m.spend), "overview-spend-month"),
        card("Requests today", count(t.requests), "overview-requests-today", `${count(m.requests)} this month`),
        card("Error rate today", percent(t.error_rate), "overview-error-rate", `${count(t.errors)} errors`),
        card("Duration p50 / p95", `${duration(t.p50_ms)} / ${duration(t.p95_ms)}`, "overview-duration"),
        card("First token p50 / p95", `${duration(t.ttft_p50_ms)} / ${duration(t.ttft_p95_ms)}`, "overview-ttft"),
        card("Active users today", count(t.active_users), "overview-active-users"),
        card("Tokens today", count(t.tokens), "overview-tokens-today", `${count(m.tokens)} this month`)),
      h("h2", {}, "The service's budgets"),
      (o.service_budgets || []).length ? h("div", { class: "budgets" }, o.service_budgets.map((b) => budgetBar(b, o.tz)))
        : h("p", { class: "dim" }, "No budget caps the whole service."),
      h("div", { class: "tops" },
        h("section", {}, h("h2", {}, "Top users this month"), table([
          { label: "user", cell: (r) => r.username },
          { label: "spend", num: true, cell: (r) => money(r.spend) },
          { label: "requests", num: true, cell: (r) => count(r.requests) },
          { label: "tokens", num: true, cell: (r) => count(r.tokens) }], o.top_users || [], { label: "Top users" })),
        h("section", {}, h("h2", {}, "Top keys"), table([
          { label: "key", cell: (r) => r.name },
          { label: "user", cell: (r) => r.username },
          { label: "spend", num: true, cell: (r) => money(r.spend) },
          { label: "requests", num: true, cell: (r) => count(r.requests) }], o.top_keys || [], { label: "Top keys" })),
        h("section", {}, h("h2", {}, "Top models"), table([
          { label: "model", cell: (r) => r.model },
          { label: "spend", num: true, cell: (r) => money(r.spend) },
          { label: "requests", num: true, cell: (r) => count(r.requests) },
          { label: "tokens", num: true, cell: (r) => count(r.tokens) }], o.top_models || [], { label: "Top models" }))));
  }
  const usage = usageView(ctx, { load: data.adminSeries, splits: ["model", "user", "key"], idPrefix: "all-usage" });
  ctx.main.replaceChildren(h("h1", {}, "Overview"),
    h("div", { class: "toolbar" }, refreshButton(refresh, status), status), body,
    h("h2", {}, "Everyone's usage"), usage.element);
  try {
    await refresh();
  } catch (err) {
    body.replaceChildren(data.isMissingRoute(err) ? notHere("the overview route (/api/admin/overview)") : failure(err));
    return;
  }
  live(ctx, refresh);
  await usage.reload();
}

function card(label, value, id, note = "") {
  return h("div", { class: "card" }, h("dt", {}, label), h("dd", { id }, value), note ? h("dd", { class: "dim card-note" }, note) : null);
}

// ---- users --------------------------------------------------------------------------------

export async function usersPage(ctx) {
  const status = h("p", { class: "status", role: "status" });
  const list = h("div", { class: "user-list" });
  const search = h("input", { id: "user-search", type: "search", name: "q", placeholder: "part of a name" });
  const searchForm = h("form", { class: "form inline", role: "search", "aria-label": "Find users" },
    field("Search", search), h("div", { class: "actions" }, h("button", { type: "submit" }, "Find")));
  let timer = 0;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(refresh, 250);
  });
  searchForm.addEventListener("submit", (e) => { e.preventDefault(); refresh(); });

  async function change(u, body, done) {
    try {
      const changed = await data.patch(`/api/admin/users/${encodeURIComponent(u.id)}`, body);
      say(status, `${changed.username}: ${done}`, "ok");
    } catch (err) {
      say(status, err.message, "error");
    }
    await refresh();
  }

  function actions(u) {
    const me = ctx.me.user && ctx.me.user.id === u.id;
    const cell = h("div", { class: "row-actions" },
      h("button", { type: "button", disabled: me ? true : null, "aria-label": `${u.disabled ? "Enable" : "Disable"} ${u.username}`,
        onclick: () => change(u, { disabled: !u.disabled }, u.disabled ? "enabled" : "disabled: signed out, keys refused") },
      u.disabled ? "Enable" : "Disable"),
      h("button", { type: "button", disabled: me ? true : null, "aria-label": `${u.admin ? "Remove admin from" : "Make admin:"} ${u.username}`,
        onclick: () => change(u, { admin: !u.admin }, u.admin ? "no longer an admin" : "now an admin") },
      u.admin ? "Remove admin" : "Make admin"),
      h("a", { href: `#admin/keys?user=${encodeURIComponent(u.id)}`, "aria-label": `Keys of ${u.username}` }, "Keys"));
    const reset = h("button", { type: "button", "aria-label": `Reset the password of ${u.username}` }, "Reset password");
    reset.addEventListener("click", () => {
      const input = h("input", { type: "password", autocomplete: "new-password", minlength: "8", required: true, "aria-label": `New password for ${u.username}` });
      const form = h("form", { class: "inline-form" }, input, h("button", { type: "submit" }, "Set"),
        h("button", { type: "button", onclick: () => refresh() }, "Cancel"));
      form.addEventListener("submit", (e) => {
        e.preventDefault();
        change(u, { password: input.value }, "password reset: their sessions have ended");
      });
      reset.replaceWith(form);
      input.focus();
    });
    cell.append(reset);
    return cell;
  }

  async function refresh() {
    const users = await data.users(search.value);
    list.replaceChildren(table([
      { label: "id", num: true, cell: (u) => String(u.id) },
      { label: "username", cell: (u) => h("span", { class: "username" }, u.username) },
      { label: "email", cell: (u) => u.email || "" },
      { label: "made", cell: (u) => when(u.createTime) },
      { label: "admin", cell: (u) => (u.admin ? "admin" : "") },
      { label: "state", cell: (u) => (u.disabled ? "disabled" : "active") },
      { label: "actions", cell: actions },
    ], users, { label: "Users", empty: search.value ? "no user has that in their name" : "no users yet" }));
  }

  const name = h("input", { id: "new-user-name", name: "username", required: true, maxlength: "32", autocomplete: "off" });
  const password = h("input", { id: "new-user-password", name: "password", type: "password", required: true, minlength: "8", autocomplete: "new-password" });
  const email = h("input", { id: "new-user-email", name: "email", type: "email", autocomplete: "off" });
  const admin = h("input", { id: "new-user-admin", name: "admin", type: "checkbox" });
  const createStatus = h("p", { class: "status", role: "status" });
  const create = h("form", { class: "form inline", "aria-label": "Make a user" },
    field("Username", name), field("Password", password), field("Email (optional)", email),
    h("label", { class: "check" }, admin, "admin"),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Make user")), createStatus);
  create.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { username: name.value.trim(), password: password.value, admin: admin.checked };
    if (email.value.trim()) body.email = email.value.trim();
    try {
      const made = await data.post("/api/admin/users", body);
      say(createStatus, `made user ${made.username}`, "ok");
      create.reset();
      await refresh();
    } catch (err) {
      say(createStatus, err.message, "error");
    }
  });

  const inviteDays = h("input", { id: "invite-days", type: "number", min: "1", max: "365", value: "7" });
  const inviteOut = h("div", { class: "invite-out", role: "status" });
  const invite = h("form", { class: "form inline", "aria-label": "Make an invite" },
    field("Valid for (days)", inviteDays), h("div", { class: "actions" }, h("button", { type: "submit" }, "Make invite")), inviteOut);
  invite.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const made = await data.post("/api/admin/invites", { days: Number(inviteDays.value || 7) });
      const code = h("code", { class: "secret-key" }, made.code);
      inviteOut.replaceChildren(h("div", { class: "new-key-line" }, code, copyButton(made.code, code)),
        h("p", { class: "dim" }, `valid until ${when(made.expires)}: user register -u <name> -i ${made.code}`));
    } catch (err) {
      inviteOut.replaceChildren(failure(err));
    }
  });

  ctx.main.replaceChildren(h("h1", {}, "Users"), searchForm, status, list,
    h("h2", {}, "Make a user"), create, h("h2", {}, "Invites"),
    h("p", { class: "dim" }, "Where registration needs an invite, an invite code lets one person make an account."), invite);
  await refresh();
}

// ---- every key ----------------------------------------------------------------------------

export async function adminKeysPage(ctx) {
  const status = h("p", { class: "status", role: "status" });
  const list = h("div", { class: "key-list" });
  const names = await userNames();
  const filter = h("select", { id: "keys-user", name: "user" }, h("option", { value: "" }, "every user"),
    [...names].sort((a, b) => a[1].localeCompare(b[1])).map(([id, name]) =>
      h("option", { value: String(id), selected: ctx.params.get("user") === String(id) ? true : null }, name)));
  filter.addEventListener("change", refresh);

  async function refresh() {
    const answer = await data.get(`/api/admin/keys${filter.value ? `?user=${encodeURIComponent(filter.value)}` : ""}`);
    list.replaceChildren(keyTable(answer.data || [], {
      label: "Every API key",
      owner: (k) => names.get(k.user_id) ?? `#${k.user_id}`,
      onRevoke: async (k) => {
        try {
          const gone = await data.remove(`/api/admin/keys/${encodeURIComponent(k.id)}`);
          say(status, `revoked key ${gone.id} "${gone.name}"`, "ok");
        } catch (err) {
          say(status, err.message, "error");
        }
        await refresh();
      },
    }));
  }
  const owner = h("select", { id: "admin-key-user", name: "user", required: true },
    [...names].sort((a, b) => a[1].localeCompare(b[1])).map(([id, name]) => h("option", { value: String(id) }, name)));
  const { form, shown } = keyForm({
    idPrefix: "admin-key",
    extra: [field("For user", owner)],
    onCreate: async (body) => {
      const made = await data.post("/api/admin/keys", { ...body, user: Number(owner.value) });
      await refresh();
      return made;
    },
  });
  ctx.main.replaceChildren(h("h1", {}, "Every API key"),
    h("form", { class: "form inline", "aria-label": "Whose keys" }, field("Show keys of", filter)), status, list,
    h("h2", {}, "Make a key for a user"), form, shown);
  await refresh();
}

// ---- every budget -------------------------------------------------------------------------

export async function adminBudgetsPage(ctx) {
  const status = h("p", { class: "status", role: "status" });
  const list = h("div", { class: "budget-admin" });
  const names = await userNames();
  const keys = new Map(((await data.get("/api/admin/keys")).data || []).map((k) => [k.id, k]));
  const tz = ctx.me.tz;

  async function refresh() {
    const budgets = (await data.get("/api/admin/budgets")).data || [];
    const describe = namedBudget(names, keys);
    list.replaceChildren(...(budgets.length ? budgets.map((b) => budgetRow(b, describe)) : [h("p", { class: "dim" }, "No budgets yet.")]));
  }

  function budgetRow(b, describe) {
    const limit = h("input", { type: "text", inputmode: "decimal", value: String(b.limit), "aria-label": `New limit for budget ${b.id}`, size: "10" });
    const change = h("form", { class: "inline-form" }, limit, h("button", { type: "submit" }, "Change limit"),
      h("button", { type: "button", class: "danger", "aria-label": `Delete budget ${b.id}`, onclick: () => del(b) }, "Delete"));
    change.addEventListener("submit", async (e) => {
      e.preventDefault();
      await save({ scope: b.scope, subject: b.scope === "user" ? b.subject_id : b.scope === "key" ? b.subject_id : undefined,
        unit: b.unit, period: b.period, limit: b.unit === "usd" ? limit.value.trim() : Number(limit.value) }, `budget ${b.id} changed`);
    });
    return h("div", { class: "budget-row" }, budgetBar(b, tz, describe), change);
  }

  async function save(body, done) {
    try {
      await data.post("/api/admin/budgets", body);
      say(status, done, "ok");
    } catch (err) {
      say(status, err.message, "error");
    }
    await refresh();
  }

  async function del(b) {
    try {
      await data.remove(`/api/admin/budgets/${encodeURIComponent(b.id)}`);
      say(status, `budget ${b.id} deleted`, "ok");
    } catch (err) {
      say(status, err.message, "error");
    }
    await refresh();
  }

  const scope = h("select", { id: "budget-scope", name: "scope" }, ["user", "key", "service"].map((s) => h("option", { value: s }, s)));
  const user = h("select", { id: "budget-user", name: "user" },
    [...names].sort((a, b) => a[1].localeCompare(b[1])).map(([id, name]) => h("option", { value: String(id) }, name)));
  const key = h("select", { id: "budget-key", name: "key" },
    [...keys.values()].filter((k) => !k.revoked).map((k) => h("option", { value: String(k.id) }, `${k.id}: ${k.name} (${names.get(k.user_id) ?? k.user_id})`)));
  const userField = field("User", user);
  const keyField = field("Key", key);
  keyField.hidden = true;
  const unit = h("select", { id: "budget-unit", name: "unit" }, [["usd", "US dollars"], ["tokens", "tokens"], ["requests", "requests"]].map(([v, t]) => h("option", { value: v }, t)));
  const period = h("select", { id: "budget-period", name: "period" }, ["day", "month", "minute", "total"].map((p) => h("option", { value: p }, p)));
  const limit = h("input", { id: "budget-limit", name: "limit", required: true, inputmode: "decimal", placeholder: "5.00" });
  scope.addEventListener("change", () => {
    userField.hidden = scope.value !== "user";
    keyField.hidden = scope.value !== "key";
  });
  const form = h("form", { class: "form inline", "aria-label": "Make a budget" },
    field("For", scope), userField, keyField, field("Unit", unit), field("Per", period), field("Limit", limit),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Set budget")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { scope: scope.value, unit: unit.value, period: period.value,
      limit: unit.value === "usd" ? limit.value.trim() : Number(limit.value) };
    if (scope.value === "user") body.subject = Number(user.value);
    if (scope.value === "key") body.subject = Number(key.value);
    await save(body, "budget set");
  });

  ctx.main.replaceChildren(h("h1", {}, "Every budget"),
    h("p", { class: "dim" }, `Bars fill as requests settle (this page asks again every ${REFRESH_MS / 1000} s). Periods reset in ${tz || "the server's zone"}; times are in yours.`),
    h("h2", {}, "Set a budget"), form, h("div", { class: "toolbar" }, refreshButton(refresh, status), status), list);
  await refresh();
  live(ctx, refresh);
}

// ---- the ledger ---------------------------------------------------------------------------

const LEDGER_FIELDS = [["from", "From (day)", "date"], ["to", "To (day, included)", "date"], ["user", "User (name or id)", "text"],
  ["key", "Key id", "text"], ["model", "Model", "text"], ["door", "Door", "text"], ["outcome", "Outcome", "text"]];

export async function ledgerPage(ctx) {
  const inputs = Object.fromEntries(LEDGER_FIELDS.map(([name, , type]) =>
    [name, h("input", { id: `ledger-${name}`, name, type, autocomplete: "off", value: ctx.params.get(name) || "" })]));
  const status = h("p", { class: "status", role: "status" });
  const rows = h("div", { class: "ledger-rows" });
  const csv = h("a", { class: "button", id: "ledger-csv", href: "#", download: "ledger.csv" }, "Download CSV of this filter");
  const prev = h("button", { type: "button", id: "ledger-prev" }, "Newer");
  const next = h("button", { type: "button", id: "ledger-next" }, "Older");
  const pageLabel = h("span", { class: "dim", "aria-live": "polite" });
  let page = 1;
  let filter = {};

  const form = h("form", { class: "form inline", "aria-label": "Filter the ledger" },
    LEDGER_FIELDS.map(([name, label]) => field(label, inputs[name])),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Filter"),
      h("button", { type: "reset" }, "Clear")));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    page = 1;
    load();
  });
  form.addEventListener("reset", () => setTimeout(() => { page = 1; load(); }));
  prev.addEventListener("click", () => { page = Math.max(1, page - 1); load(); });
  next.addEventListener("click", () => { page += 1; load(); });

  async function load() {
    filter = Object.fromEntries(Object.entries(inputs).map(([name, input]) => [name, input.value.trim()]));
    say(status, "loading…");
    let answer;
    try {
      if (filter.user && !/^\d+$/.test(filter.user)) { // a name: the route takes the user's id
        const found = (await data.users(filter.user)).find((u) => u.username === filter.user);
        if (!found) {
          say(status, `there is no user named "${filter.user}"`, "error");
          rows.replaceChildren();
          return;
        }
        filter.user = String(found.id);
      }
      answer = await data.ledger(filter, page);
    } catch (err) {
      status.textContent = "";
      rows.replaceChildren(failure(err));
      return;
    }
    csv.href = data.ledgerCsvUrl(filter);
    const list = answer.data || [];
    say(status, list.length ? `${list.length} rows on this page, newest first` : "no rows match this filter");
    pageLabel.textContent = `page ${page}`;
    prev.disabled = page <= 1;
    next.disabled = !answer.has_more;
    rows.replaceChildren(table([
      { label: "id", num: true, cell: (r) => String(r.id) },
      { label: "time", cell: (r) => when(r.created) },
      { label: "user", cell: (r) => r.username ?? (r.user_id === null ? "" : `#${r.user_id}`) },
      { label: "key", cell: (r) => r.key_name ?? (r.key_id === null ? "" : `#${r.key_id}`) },
      { label: "door", cell: (r) => r.door || "" },
      { label: "model", cell: (r) => h("span", { class: "model" }, r.model || "") },
      { label: "upstream", cell: (r) => r.upstream || "" },
      { label: "prompt", num: true, cell: (r) => count(r.prompt_tokens) },
      { label: "completion", num: true, cell: (r) => count(r.completion_tokens) },
      { label: "cost", num: true, cell: (r) => money(r.cost) },
      { label: "outcome", cell: (r) => r.outcome || r.state || "" },
      { label: "duration", num: true, cell: (r) => duration(r.duration_ms) },
    ], list, { label: "Ledger rows", empty: "no rows match this filter" }));
  }

  ctx.main.replaceChildren(h("h1", {}, "Ledger"),
    h("p", { class: "dim" }, `Every request that was admitted, what it used and what it cost, newest first. Times are in your zone; From and To are days in ${ctx.me.tz || "the server's zone"}.`),
    form, h("div", { class: "toolbar" }, csv, prev, next, pageLabel), status, rows);
  await load();
}

// ---- upstreams ----------------------------------------------------------------------------

const STATES = { closed: "in use", open: "open: skipped", half_open: "half-open: trying again" };

export async function upstreamsPage(ctx) {
  const status = h("p", { class: "status", role: "status" });
  const body = h("div", { class: "upstreams" });
  async function refresh() {
    const answer = await data.upstreams();
    body.replaceChildren(
      answer.scope ? h("p", { class: "dim" }, `Counts cover ${answer.scope}.`) : "",
      table([
        { label: "name", cell: (u) => u.name },
        { label: "address", cell: (u) => h("code", {}, u.base_url || "") },
        { label: "breaker", cell: (u) => h("span", { class: `state state-${u.state}` }, STATES[u.state] || u.state) },
        { label: "requests", num: true, cell: (u) => count(u.requests) },
        { label: "errors", num: true, cell: (u) => count(u.errors) },
        { label: "error rate", num: true, cell: (u) => percent(u.error_rate) },
        { label: "latency p50", num: true, cell: (u) => duration(u.latency_p50_ms) },
        { label: "latency p95", num: true, cell: (u) => duration(u.latency_p95_ms) },
        { label: "last error", cell: (u) => u.last_error || "" },
      ], answer.data || [], { label: "Upstreams" }));
    for (const [i, u] of (answer.data || []).entries()) {
      const row = body.querySelectorAll("tbody tr")[i];
      if (row) row.dataset.upstream = u.name;
    }
  }
  ctx.main.replaceChildren(h("h1", {}, "Upstreams"),
    h("p", { class: "dim" }, `Each upstream's circuit breaker (open: skipped after failing), its recent errors and latency. This page asks again every ${REFRESH_MS / 1000} s.`),
    h("div", { class: "toolbar" }, refreshButton(refresh, status), status), body);
  try {
    await refresh();
  } catch (err) {
    body.replaceChildren(data.isMissingRoute(err) ? notHere("the upstreams route (/api/admin/upstreams)") : failure(err));
    return;
  }
  live(ctx, refresh);
}
