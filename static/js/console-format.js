// How the console shows numbers and times. The rules, tested in tests/test_console_browser.py:
// - Money: dollars from the server's strings ("0.004200") or numbers. $1 and above: cents, with
//   thousands separators ("$1,234.56"); below $1: four significant digits, trailing zeros
//   dropped but cents kept ("$0.0042", "$0.1235", "$0.50"); a positive amount below $0.0001 is "<$0.0001" (never
//   "2e-7", never a "$0.0000" that looks like nothing was spent); zero is "$0".
// - Tokens and counts: whole numbers with thousands separators ("1,234,567").
// - Times: the server's ISO times (UTC) in the viewer's own zone and locale.

export const TINY = 0.0001;

/** A dollar amount for a person (see the rules above). */
export function money(value) {
  const n = typeof value === "number" ? value : Number(value);
  if (value === null || value === undefined || value === "" || !Number.isFinite(n)) return "—";
  if (n === 0) return "$0";
  const sign = n < 0 ? "-" : "";
  const a = Math.abs(n);
  if (a < TINY) return `${sign}<$0.0001`;
  const digits = Math.min(8, Math.max(2, 3 - Math.floor(Math.log10(a)))); // 4 significant
  if (a >= 1 || Number(a.toFixed(digits)) >= 1) {
    return `${sign}$${a.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;
  }
  let text = a.toFixed(digits).replace(/0+$/, ""); // below $1: never an integer
  if (/\.\d$/.test(text)) text += "0"; // at least cents: "$0.50", not "$0.5"
  return `${sign}$${text}`;
}

/** A whole number with thousands separators. */
export function count(value) {
  const n = Number(value);
  if (value === null || value === undefined || !Number.isFinite(n)) return "—";
  return Math.round(n).toLocaleString("en-US");
}

/** A short axis label of a count: 1,200 -> "1.2k", 3,400,000 -> "3.4M". */
export function shortCount(value) {
  const n = Number(value);
  const a = Math.abs(n);
  if (a >= 1e9) return `${+(n / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
  if (a >= 1e4) return `${+(n / 1e3).toFixed(1)}k`;
  return count(n);
}

/** A share (0.0123) as a percentage ("1.2%"). */
export function percent(value) {
  const n = Number(value);
  if (value === null || value === undefined || !Number.isFinite(n)) return "—";
  if (n > 0 && n < 0.001) return "<0.1%";
  return `${(n * 100).toFixed(n < 0.1 ? 1 : 0)}%`;
}

/** Milliseconds as "340 ms" or "2.4 s". */
export function duration(ms) {
  const n = Number(ms);
  if (ms === null || ms === undefined || !Number.isFinite(n)) return "—";
  return n < 1000 ? `${Math.round(n)} ms` : `${(n / 1000).toFixed(1)} s`;
}

/** An ISO time in the viewer's zone: "12 Nov 2026, 14:05". */
export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return String(iso);
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/** How far off an ISO time is: "in 3 h", "in 12 days", "5 min ago". */
export function fromNow(iso, now = Date.now()) {
  if (!iso) return "";
  const minutes = Math.round((new Date(iso).getTime() - now) / 60000);
  const a = Math.abs(minutes);
  const text = a < 120 ? `${a} min` : a < 2880 ? `${Math.round(a / 60)} h` : `${Math.round(a / 1440)} days`;
  return minutes >= 0 ? `in ${text}` : `${text} ago`;
}

/** The viewer's own time zone's name ("Europe/Paris"), for labels. */
export function viewerZone() {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "your time zone";
  } catch {
    return "your time zone";
  }
}

/** A day (YYYY-MM-DD) for an axis: "12 Nov". */
export function dayLabel(day) {
  const [y, m, d] = String(day).split("-").map(Number);
  if (!y || !m || !d) return String(day);
  return new Date(Date.UTC(y, m - 1, d)).toLocaleDateString(undefined, { day: "numeric", month: "short", timeZone: "UTC" });
}

/** A budget's amount in its unit: dollars, or a count of tokens or requests. */
export function amount(unit, value) {
  return unit === "usd" ? money(value) : `${count(value)} ${unit}`;
}
