// `gpt usage [--days N]`: what you spent (GET /api/usage): each budget that applies to you as a
// bar of this period's spend against its limit, with what is left and when it resets; then
// today's spend and the last days' by model. With AUTH=open or token the budgets and spend
// are the whole service's.

import { UsageError, parseOptions } from "./args.js";
import { getUsage } from "./api.js";
import { tokenFor } from "./account.js";

export const USAGE_OPTIONS = [
  { long: "days", key: "days", value: true, valueName: "number of days", example: "gpt usage --days 7" },
];
const BAR = 24;
const PERIODS = { minute: "this minute", day: "today", month: "this month", total: "in all" };
const WHOSE = { service: "the service", user: "your account", key: "this key" };

export async function usage(words, app) {
  const { options, rest } = parseOptions(words, USAGE_OPTIONS, "gpt usage");
  if (rest.length) throw new UsageError(`gpt usage: unexpected "${rest.join(" ")}"`, "e.g. gpt usage --days 7");
  let days = 7;
  if (options.days !== undefined) {
    days = Number(options.days);
    if (!/^\d{1,3}$/.test(options.days) || days < 1 || days > 400) {
      throw new UsageError(`gpt usage: --days needs a whole number from 1 to 400, not "${options.days}"`, "e.g. gpt usage --days 30");
    }
  }
  const answer = await getUsage(days, { token: tokenFor(app) });
  const { term } = app;
  const who = answer.user ? `${answer.user}${answer.key ? ` (key "${answer.key}")` : ""}` : "the service";
  term.print(`Usage of ${who}`, "heading");
  const budgets = Array.isArray(answer.budgets) ? answer.budgets : [];
  if (!budgets.length) term.print("no budget applies: nothing caps this spend", "dim");
  for (const budget of budgets) term.print(budgetLine(budget), budgetTone(budget));
  const byDay = Array.isArray(answer.by_day) ? answer.by_day : [];
  const today = new Date().toISOString().slice(0, 10);
  const todays = byDay.filter((row) => row.day === today);
  term.print(`today: ${summary(todays)}`, "ok");
  if (byDay.length > todays.length) {
    term.print(`the last ${days} days, by day and model:`, "dim");
    for (const row of byDay) {
      term.print(`  ${row.day}  ${row.model}  ${summary([row])}`, "dim");
    }
  }
}

/** `your account's usd budget, this month: [█████░░░] $1.20 of $5.00 (24%), $3.80 left · resets …` */
export function budgetLine(b) {
  const money = b.unit === "usd";
  const limit = Number(b.limit);
  const spent = Number(b.spent);
  const reserved = Number(b.reserved);
  const share = limit > 0 ? Math.min(1, (spent + reserved) / limit) : 1;
  const filled = Math.round(share * BAR);
  const bar = "█".repeat(filled) + "░".repeat(BAR - filled);
  const show = (v) => (money ? `$${Number(v).toFixed(2)}` : `${Number(v).toLocaleString("en")} ${b.unit}`);
  let line = `${WHOSE[b.scope] || b.scope}, ${b.unit} ${PERIODS[b.period] || b.period}: [${bar}] ` +
    `${show(spent)} of ${show(limit)} (${Math.round(share * 100)}%)`;
  if (reserved) line += `, ${show(reserved)} held by replies under way`;
  line += `, ${show(b.left)} left`;
  line += b.resets_at ? ` · resets ${resetsAt(b.resets_at)}` : " · never resets";
  return line;
}

function budgetTone(b) {
  const limit = Number(b.limit);
  return limit > 0 && Number(b.left) / limit < 0.1 ? "error" : "ok";
}

/** A reset time as the reader's clock shows it, and how far off it is. */
function resetsAt(iso) {
  const when = new Date(iso);
  const minutes = Math.max(0, Math.round((when - Date.now()) / 60000));
  const far = minutes < 120 ? `in ${minutes} min` : minutes < 2880 ? `in ${Math.round(minutes / 60)} h`
    : `in ${Math.round(minutes / 1440)} days`;
  return `${when.toLocaleString()} (${far})`;
}

function summary(rows) {
  const sum = (key) => rows.reduce((total, row) => total + Number(row[key] || 0), 0);
  if (!rows.length) return "nothing yet";
  const requests = sum("requests");
  return `${requests} request${requests === 1 ? "" : "s"}, ${sum("prompt_tokens").toLocaleString("en")} + ` +
    `${sum("completion_tokens").toLocaleString("en")} tokens, $${sum("cost").toFixed(6)}`;
}
