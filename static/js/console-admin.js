// The console's admin views: the overview (today and this month, the service's budgets, the
// top users, keys and models, everyone's usage per day), users (search, make, disable, reset a
// password, make admin, invites), every key, every budget (make, change, delete), the ledger
// (filters, pages, the filter as CSV) and the upstreams (breaker, errors, latency). Only
// admins are offered these; the server refuses their routes to anyone else in any case.

import { copyButton, failure, field, h, say, table } from "./console-dom.js";
import * as data from "./console-data.js";
import { count, duration, money, percent, when } from "./console-format.js";
import { picker } from "./console-pick.js";
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

const PER_PAGE = 50;
const PICK_SHOWN = 10; // suggestions a search field shows

/** Newer/Older buttons and a page label for a list the server pages; `go(page)` loads one. */
function pager(idPrefix, go) {
  let page = 1;
  const prev = h("button", { type: "button", id: `${idPrefix}-prev` }, "Previous page");
  const next = h("button", { type: "button", id: `${idPrefix}-next` }, "Next page");
  const label = h("span", { class: "dim", id: `${idPrefix}-page`, "aria-live": "polite" });
  prev.addEventListener("click", () => go(Math.max(1, page - 1)));
  next.addEventListener("click", () => go(page + 1));
  return {
    element: h("div", { class: "toolbar pager" }, prev, next, label),
    /** After a page is shown: where we are, and whether more follow. */
    at(shown, answer, rows) {
      page = shown;
      prev.disabled = page <= 1;
      next.disabled = !answer.has_more;
      label.textContent = rows ? `page ${page}: ${rows} shown${answer.has_more ? ", more follow" : ""}` : `page ${page}`;
    },
    get page() { return page; },
  };
}

/** A budget's subject by the names its row carries (username, key_name). */
function namedBudget(b) {
  const who = b.username ?? null;
  if (b.scope === "user") return `user ${who ?? `#${b.subject_id} (gone)`}`;
  if (b.scope === "key") {
    return b.key_name === null || b.key_name === undefined ? `key #${b.subject_id} (gone)` : `key ${b.key_name} (#${b.subject_id}, ${who})`;
  }
  return b.scope;
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
    body.replaceChildren(failure(err));
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
  const pages = pager("users", (page) => refresh(page));
  let timer = 0;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => refresh(1), 250);
  });
  searchForm.addEventListener("submit", (e) => { e.preventDefault(); clearTimeout(timer); refresh(1); });

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

  let asked = 0; // answers to an older search (typing fast) are dropped
  async function refresh(page = pages.page) {
    const ask = ++asked;
    const answer = await data.users({ q: search.value, page, perPage: PER_PAGE });
    if (ask !== asked) return;
    const users = answer.data || [];
    if (!users.length && page > 1) return refresh(page - 1); // the last page emptied
    pages.at(page, answer, users.length);
    list.dataset.q = search.value.trim();
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
      search.value = made.username; // show them
      await refresh(1);
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

  ctx.main.replaceChildren(h("h1", {}, "Users"), searchForm, status, list, pages.element,
    h("h2", {}, "Make a user"), create, h("h2", {}, "Invites"),
    h("p", { class: "dim" }, "Where registration needs an invite, an invite code lets one person make an account."), invite);
  await refresh();
}

// ---- every key ----------------------------------------------------------------------------

export async function adminKeysPage(ctx) {
  const status = h("p", { class: "status", role: "status" });
  const list = h("div", { class: "key-list" });
  const owner = h("input", { id: "keys-user", name: "user", type: "search", autocomplete: "off", placeholder: "everyone", value: ctx.params.get("user") || "" });
  const named = h("input", { id: "keys-q", name: "q", type: "search", autocomplete: "off", placeholder: "part of a key's name" });
  const filter = h("form", { class: "form inline", role: "search", "aria-label": "Which keys" },
    field("Owner (name or id)", owner), field("Key name", named), h("div", { class: "actions" }, h("button", { type: "submit" }, "Show")));
  filter.addEventListener("submit", (e) => { e.preventDefault(); refresh(1); });
  const pages = pager("keys", (page) => refresh(page));

  async function refresh(page = pages.page) {
    let answer;
    try {
      answer = await data.keys({ user: owner.value, q: named.value, page, perPage: PER_PAGE });
    } catch (err) {
      list.replaceChildren(failure(err));
      return;
    }
    const found = answer.data || [];
    if (!found.length && page > 1) return refresh(page - 1);
    pages.at(page, answer, found.length);
    list.replaceChildren(keyTable(found, {
      label: "Every API key",
      owner: (k) => k.username ?? `#${k.user_id}`,
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
  const forUser = h("input", { id: "admin-key-user", name: "user", required: true, autocomplete: "off", maxlength: "200" });
  const { form, shown } = keyForm({
    idPrefix: "admin-key",
    extra: [field("For user (name or id)", forUser)],
    onCreate: async (body) => {
      const who = forUser.value.trim();
      const made = await data.post("/api/admin/keys", { ...body, user: /^\d+$/.test(who) ? Number(who) : who });
      await refresh();
      return made;
    },
  });
  ctx.main.replaceChildren(h("h1", {}, "Every API key"), filter, status, list, pages.element,
    h("h2", {}, "Make a key for a user"), form, shown);
  await refresh(1);
}

// ---- every budget -------------------------------------------------------------------------

export async function adminBudgetsPage(ctx) {
  const status = h("p", { class: "status", role: "status" });
  const list = h("div", { class: "budget-admin" });
  const tz = ctx.me.tz;

  async function refresh() {
    const budgets = (await data.get("/api/admin/budgets")).data || [];
    list.replaceChildren(...(budgets.length ? budgets.map(budgetRow) : [h("p", { class: "dim" }, "No budgets yet.")]));
  }

  function budgetRow(b) {
    const limit = h("input", { type: "text", inputmode: "decimal", value: String(b.limit), "aria-label": `New limit for budget ${b.id}`, size: "10" });
    const change = h("form", { class: "inline-form" }, limit, h("button", { type: "submit" }, "Change limit"),
      h("button", { type: "button", class: "danger", "aria-label": `Delete budget ${b.id}`, onclick: () => del(b) }, "Delete"));
    change.addEventListener("submit", async (e) => {
      e.preventDefault();
      await save({ scope: b.scope, subject: b.scope === "service" ? undefined : b.subject_id,
        unit: b.unit, period: b.period, limit: b.unit === "usd" ? limit.value.trim() : Number(limit.value) }, `budget ${b.id} changed`);
    });
    return h("div", { class: "budget-row" }, budgetBar(b, tz, namedBudget), change);
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

  // The subject is found by searching (a page of ten), never picked from every user or key.
  const scope = h("select", { id: "budget-scope", name: "scope" }, ["user", "key", "service"].map((s) => h("option", { value: s }, s)));
  const user = picker({
    id: "budget-user", label: "User (name or id)", note: "type part of a name",
    find: async (text) => ((await data.users({ q: text, perPage: PICK_SHOWN })).data || [])
      .map((u) => ({ value: u.id, text: u.username, detail: `#${u.id}${u.disabled ? ", disabled" : ""}` })),
  });
  const key = picker({
    id: "budget-key", label: "Key (name or id)", note: "type part of a key's name",
    find: async (text) => ((await data.keys({ user: user.value === null ? "" : String(user.value), q: text, perPage: PICK_SHOWN })).data || [])
      .filter((k) => !k.revoked)
      .map((k) => ({ value: k.id, text: k.name, detail: `#${k.id}, ${k.username ?? `user #${k.user_id}`}` })),
  });
  user.onChange(() => key.clear()); // a key chosen under another owner would not match the name shown
  const unit = h("select", { id: "budget-unit", name: "unit" }, [["usd", "US dollars"], ["tokens", "tokens"], ["requests", "requests"]].map(([v, t]) => h("option", { value: v }, t)));
  const period = h("select", { id: "budget-period", name: "period" }, ["day", "month", "minute", "total"].map((p) => h("option", { value: p }, p)));
  const limit = h("input", { id: "budget-limit", name: "limit", required: true, inputmode: "decimal", placeholder: "5.00" });
  function shape() {
    user.element.hidden = scope.value === "service";
    key.element.hidden = scope.value !== "key";
    user.label.textContent = scope.value === "key" ? "Owner (narrows the keys)" : "User (name or id)";
  }
  scope.addEventListener("change", shape);
  shape();
  const formStatus = h("p", { class: "status", role: "status" });
  const form = h("form", { class: "form inline", "aria-label": "Make a budget" },
    field("For", scope), user.element, key.element, field("Unit", unit), field("Per", period), field("Limit", limit),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Set budget")), formStatus);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { scope: scope.value, unit: unit.value, period: period.value,
      limit: unit.value === "usd" ? limit.value.trim() : Number(limit.value) };
    if (scope.value === "user") {
      // chosen from the list, else what was typed: an id, or a name the server looks up
      body.subject = user.value ?? (/^\d+$/.test(user.text) ? Number(user.text) : user.text);
      if (body.subject === "") {
        say(formStatus, "name the user: type part of their name and choose them", "error");
        user.input.focus();
        return;
      }
    }
    if (scope.value === "key") {
      body.subject = key.value ?? (/^\d+$/.test(key.text) ? Number(key.text) : null);
      if (body.subject === null) {
        say(formStatus, "choose a key from the suggestions (or type its id)", "error");
        key.input.focus();
        return;
      }
    }
    say(formStatus, "");
    await save(body, `budget set for ${scope.value === "service" ? "the service" : `${scope.value} ${(scope.value === "user" ? user : key).text}`}`);
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
        const found = await data.userNamed(filter.user);
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
    body.replaceChildren(failure(err));
    return;
  }
  live(ctx, refresh);
}
