// The console's views of a signed-in user's own things: usage (a chart per day over a range,
// split by model or key), budgets (bars with what is left and when each resets) and API keys
// (make one, shown once with a Copy button; revoke; when each was last used). The pieces are
// exported for the admin views, which show the same things for everyone.

import { copyButton, failure, field, h, say, table } from "./console-dom.js";
import * as data from "./console-data.js";
import { amount, count, fromNow, money, viewerZone, when } from "./console-format.js";
import { timeChart } from "./console-chart.js";

// ---- usage --------------------------------------------------------------------------------

const MEASURES = {
  cost: { label: "Spend", format: money, axis: money, unit: "US dollars" },
  tokens: { label: "Tokens", format: count, axis: count, unit: "prompt + completion tokens" },
  requests: { label: "Requests", format: count, axis: count, unit: "requests" },
};

/** Today as YYYY-MM-DD in `tz` (the zone budgets and days are counted in). */
export function todayIn(tz) {
  try {
    return new Intl.DateTimeFormat("en-CA", { timeZone: tz || "UTC", year: "numeric", month: "2-digit", day: "2-digit" }).format(new Date());
  } catch {
    return new Date().toISOString().slice(0, 10);
  }
}

function minusDays(day, n) {
  const d = new Date(`${day}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() - n);
  return d.toISOString().slice(0, 10);
}

/**
 * The usage view: range (7, 30, 90 days or custom), split and measure; totals; the chart; a
 * table by series. `load({from, to, by})` fetches the series; `splits`: what it may be split by.
 */
export function usageView(ctx, { load, splits = ["model", "key"], idPrefix = "usage" }) {
  const tz = ctx.me.tz || "UTC";
  const today = todayIn(tz);
  const choice = { days: "30", from: minusDays(today, 29), to: today, by: splits[0], measure: "cost" };
  const status = h("p", { class: "status", role: "status" });
  const result = h("div", { class: "usage-result" });

  const range = h("select", { id: `${idPrefix}-range`, name: "range" },
    [["7", "last 7 days"], ["30", "last 30 days"], ["90", "last 90 days"], ["custom", "custom range"]].map(([v, t]) =>
      h("option", { value: v, selected: v === choice.days ? true : null }, t)));
  const from = h("input", { id: `${idPrefix}-from`, type: "date", value: choice.from, max: today });
  const to = h("input", { id: `${idPrefix}-to`, type: "date", value: choice.to, max: today });
  const custom = h("div", { class: "custom-range", hidden: true },
    field("From", from), field("To", to));
  const by = h("select", { id: `${idPrefix}-by`, name: "by" }, splits.map((s) => h("option", { value: s }, `by ${s}`)));
  const measure = h("select", { id: `${idPrefix}-measure`, name: "measure" },
    Object.entries(MEASURES).map(([v, m]) => h("option", { value: v }, m.label)));
  const form = h("form", { class: "form inline", "aria-label": "Which usage to show" },
    field("Range", range), custom, field("Split", by), field("Show", measure),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Show")), status);

  let last = null;
  async function reload() {
    if (choice.days !== "custom") {
      choice.to = today;
      choice.from = minusDays(today, Number(choice.days) - 1);
    } else {
      choice.from = from.value;
      choice.to = to.value;
      if (!choice.from || !choice.to || choice.from > choice.to) {
        say(status, "pick a start day on or before the end day", "error");
        return;
      }
    }
    say(status, "loading…");
    try {
      last = await load({ from: choice.from, to: choice.to, by: choice.by });
    } catch (err) {
      status.textContent = "";
      result.replaceChildren(failure(err));
      return;
    }
    say(status, `${last.from} to ${last.to}, days counted in ${last.tz || tz}`);
    draw();
  }

  function draw() {
    const m = MEASURES[choice.measure];
    const totals = last.totals || {};
    const series = (last.series || []).map((s) => ({
      name: s.name === null || s.name === undefined ? "(none)" : String(s.name),
      values: (s[choice.measure] || []).map(Number),
      all: s,
    }));
    const cards = h("dl", { class: "cards", id: `${idPrefix}-totals` },
      card("Spend", money(totals.cost), `${idPrefix}-total-cost`),
      card("Tokens", count(totals.tokens), `${idPrefix}-total-tokens`,
        `${count(totals.prompt_tokens)} prompt + ${count(totals.completion_tokens)} completion`),
      card("Requests", count(totals.requests), `${idPrefix}-total-requests`));
    const bySeries = table([
      { label: choice.by, cell: (s) => s.name },
      { label: "requests", num: true, cell: (s) => count(sum(s.all.requests)) },
      { label: "tokens", num: true, cell: (s) => count(sum(s.all.tokens)) },
      { label: "spend", num: true, cell: (s) => money(sum(s.all.cost)) },
    ], [...series].sort((a, b) => sum(b.all.cost) - sum(a.all.cost) || sum(b.all.tokens) - sum(a.all.tokens)),
    { label: `Usage by ${choice.by}`, empty: "nothing was used in this range" });
    result.replaceChildren(cards,
      timeChart({ title: `${m.label} per day, by ${choice.by}`, days: last.days || [], series, format: m.format, axis: m.axis, unitLabel: m.unit }),
      h("h3", {}, `By ${choice.by}`), bySeries);
  }

  range.addEventListener("change", () => {
    choice.days = range.value;
    custom.hidden = choice.days !== "custom";
    if (choice.days !== "custom") reload();
    else from.focus();
  });
  by.addEventListener("change", () => { choice.by = by.value; reload(); });
  measure.addEventListener("change", () => { choice.measure = measure.value; if (last) draw(); });
  form.addEventListener("submit", (e) => { e.preventDefault(); reload(); });
  return { element: h("section", { class: "usage" }, form, result), reload };
}

function sum(list) {
  return (list || []).reduce((a, b) => a + Number(b), 0);
}

function card(label, value, id, note = "") {
  return h("div", { class: "card" }, h("dt", {}, label), h("dd", { id }, value), note ? h("dd", { class: "dim card-note" }, note) : null);
}

export async function usagePage(ctx) {
  const view = usageView(ctx, { load: data.usageSeries });
  ctx.main.replaceChildren(h("h1", {}, "Your usage"),
    h("p", { class: "dim" }, `Spend, tokens and requests per day. Times are in your zone (${viewerZone()}).`), view.element);
  await view.reload();
}

// ---- budgets ------------------------------------------------------------------------------

const PERIODS = { minute: "this minute", day: "today", month: "this month", total: "in all" };

/** What a budget is about, for people: "your account", "the service", "user ann", "key 3". */
function budgetSubject(b, names) {
  if (b.scope === "service") return "the service";
  if (names) return names(b);
  return b.scope === "user" ? "your account" : b.scope === "key" ? `key ${b.subject_id}` : b.scope;
}

/** One budget as a bar: spent (and held by replies under way) against the limit. */
export function budgetBar(b, tz, names = null) {
  const limit = Number(b.limit);
  const spent = Number(b.spent);
  const reserved = Number(b.reserved);
  const used = spent + reserved;
  const share = limit > 0 ? Math.min(1, used / limit) : 1;
  const tone = limit > 0 && Number(b.left) / limit < 0.1 ? "low" : share > 0.75 ? "high" : "";
  const fill = h("div", { class: "fill" });
  fill.style.width = `${(limit > 0 ? Math.min(1, spent / limit) : 1) * 100}%`;
  const held = h("div", { class: "held" });
  held.style.width = `${(limit > 0 ? Math.min(1 - Math.min(1, spent / limit), reserved / limit) : 0) * 100}%`;
  const title = `${budgetSubject(b, names)}: ${b.unit === "usd" ? "spend" : b.unit} ${PERIODS[b.period] || b.period}`;
  const bar = h("div", {
    class: `bar ${tone}`, role: "meter", "aria-label": title,
    "aria-valuemin": "0", "aria-valuemax": String(limit), "aria-valuenow": String(Math.min(used, limit)),
    "aria-valuetext": `${amount(b.unit, used)} of ${amount(b.unit, b.limit)}`,
  }, fill, held);
  const resets = b.resets_at
    ? [`resets ${when(b.resets_at)} (${fromNow(b.resets_at)})`, h("span", { class: "dim" }, ` · periods reset in ${tz || "the server's zone"}`)]
    : ["never resets"];
  return h("div", { class: "budget", "data-budget": String(b.id) },
    h("div", { class: "budget-head" }, h("span", { class: "budget-title" }, title),
      h("span", { class: "budget-left" }, `${amount(b.unit, b.left)} left`)),
    bar,
    h("div", { class: "budget-foot" },
      h("span", { class: "budget-used" }, `${amount(b.unit, b.spent)} of ${amount(b.unit, b.limit)} (${Math.round(share * 100)}%)`),
      reserved ? h("span", { class: "dim" }, ` · ${amount(b.unit, b.reserved)} held by replies under way`) : null,
      h("span", { class: "budget-reset" }, " · ", ...resets)));
}

export async function budgetsPage(ctx) {
  const answer = await data.myUsage();
  const budgets = Array.isArray(answer.budgets) ? answer.budgets : [];
  ctx.main.replaceChildren(h("h1", {}, "Your budgets"),
    h("p", { class: "dim" }, `What each budget that applies to you allows, what is left, and when it resets (in your zone, ${viewerZone()}).`),
    budgets.length ? h("div", { class: "budgets" }, budgets.map((b) => budgetBar(b, ctx.me.tz)))
      : h("p", {}, "No budget applies to you: nothing caps your spend."));
}

// ---- keys ---------------------------------------------------------------------------------

/** The table of keys, each with a Revoke button (a second press confirms). */
export function keyTable(keys, { onRevoke, owner = null, label = "API keys" }) {
  const columns = [
    { label: "id", num: true, cell: (k) => String(k.id) },
    { label: "name", cell: (k) => h("span", { class: "key-name" }, k.name) },
  ];
  if (owner) columns.push({ label: "user", cell: (k) => owner(k) });
  columns.push(
    { label: "key", cell: (k) => h("code", {}, k.hint) },
    { label: "made", cell: (k) => when(k.created) },
    { label: "last used", cell: (k) => (k.last_used ? when(k.last_used) : "never") },
    { label: "expires", cell: (k) => (k.expires ? when(k.expires) : "never") },
    { label: "models", cell: (k) => (k.models ? k.models.join(", ") : "any") },
    { label: "", cell: (k) => (k.revoked ? h("span", { class: "dim" }, `revoked ${when(k.revoked)}`) : revokeButton(k, onRevoke)) },
  );
  const box = table(columns, keys, { label, empty: "no keys yet" });
  for (const [i, k] of keys.entries()) {
    const row = box.querySelectorAll("tbody tr")[i];
    if (row) {
      row.dataset.key = String(k.id);
      if (k.revoked) row.classList.add("revoked");
    }
  }
  return box;
}

function revokeButton(k, onRevoke) {
  const button = h("button", { type: "button", class: "danger", "aria-label": `Revoke key ${k.id} (${k.name})` }, "Revoke");
  let armed = false;
  button.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      button.textContent = "Confirm revoke";
      button.setAttribute("aria-label", `Confirm: revoke key ${k.id} (${k.name})`);
      return;
    }
    button.disabled = true;
    await onRevoke(k);
  });
  button.addEventListener("blur", () => {
    if (armed && !button.disabled) {
      armed = false;
      button.textContent = "Revoke";
      button.setAttribute("aria-label", `Revoke key ${k.id} (${k.name})`);
    }
  });
  return button;
}

/** The fields of a new key: name, days, models; `extra` fields (an admin's user) come first. */
export function keyForm({ idPrefix, onCreate, extra = [] }) {
  const name = h("input", { id: `${idPrefix}-name`, name: "name", required: true, maxlength: "100", placeholder: "my laptop" });
  const days = h("input", { id: `${idPrefix}-days`, name: "days", type: "number", min: "1", max: "3650", step: "1", placeholder: "never" });
  const models = h("input", { id: `${idPrefix}-models`, name: "models", placeholder: "any model" });
  const status = h("p", { class: "status", role: "status" });
  const shown = h("div", { class: "new-key-box" });
  const form = h("form", { class: "form inline", "aria-label": "Make a key" }, extra,
    field("Name", name), field("Expires after (days)", days), field("Models (comma-separated)", models),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Make key")), status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = { name: name.value.trim() };
    if (days.value) body.expires_days = Number(days.value);
    const list = models.value.split(",").map((m) => m.trim()).filter(Boolean);
    if (list.length) body.models = list;
    say(status, "making the key…");
    try {
      const made = await onCreate(body);
      say(status, `made key ${made.id} "${made.name}"`, "ok");
      shown.replaceChildren(newKey(made));
      form.reset();
      shown.querySelector("button").focus();
    } catch (err) {
      say(status, err.message, "error");
    }
  });
  return { form, shown };
}

/** The new key, once: selectable, a Copy button, and the warning that it is not shown again. */
function newKey(made) {
  const code = h("code", { class: "secret-key" }, made.key);
  return h("div", { class: "new-key", role: "group", "aria-label": "Your new key" },
    h("div", { class: "new-key-line" }, code, copyButton(made.key, code)),
    h("p", { class: "note" }, "This is the only time the key is shown: copy it now and keep it somewhere safe. " +
      "The server keeps only a fingerprint of it."),
    h("p", { class: "dim" }, `Use it as Authorization: Bearer <key>; an OpenAI SDK: base URL ${location.origin}/v1.`));
}

export async function keysPage(ctx) {
  const list = h("div", { class: "key-list" });
  const status = h("p", { class: "status", role: "status" });
  async function refresh() {
    const answer = await data.get("/api/keys");
    list.replaceChildren(keyTable(answer.data || [], {
      label: "Your API keys",
      onRevoke: async (k) => {
        try {
          const gone = await data.remove(`/api/keys/${encodeURIComponent(k.id)}`);
          say(status, `revoked key ${gone.id} "${gone.name}": it stops working within a second, everywhere`, "ok");
        } catch (err) {
          say(status, err.message, "error");
        }
        await refresh();
      },
    }));
  }
  const { form, shown } = keyForm({
    idPrefix: "key",
    onCreate: async (body) => {
      const made = await data.post("/api/keys", body);
      await refresh();
      return made;
    },
  });
  ctx.main.replaceChildren(h("h1", {}, "Your API keys"),
    h("p", { class: "dim" }, "Keys let SDKs, chat apps and scripts use the service as you. A new key is shown once."),
    h("h2", {}, "Make a key"), form, shown, h("h2", {}, "Your keys"), status, list);
  await refresh();
}
