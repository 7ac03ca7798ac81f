// The console's time-series chart, drawn as SVG by hand (no library: the page loads nothing
// it does not own, and this is all a per-day chart needs). One chart shows one measure
// (spend, tokens or requests) per day for several series (models, keys or users):
// - hover (or focus the chart and press Left/Right, Home/End) shows every shown series' value
//   that day, formatted, and their sum;
// - the legend's buttons hide and show a series (aria-pressed says which are shown);
// - the scale is linear, logarithmic (a model that costs 100 times the others no longer
//   flattens them), or "per series": a small chart for each, on its own scale;
// - more than MAX_SERIES series: the smallest are summed into one "other" series, so the
//   colours stay tellable apart and the sums stay right;
// - under the chart, the same numbers as a table (for a screen reader, or to copy).
// Everything from data (a series' name) is set as text; colours and sizes come from classes
// in console.css, positions from SVG attributes and CSSOM writes, so the CSP holds.

import { h, svg, table } from "./console-dom.js";
import { dayLabel } from "./console-format.js";

const MAX_SERIES = 8;
const COLOURS = 8; // .c0 ... .c7 in console.css
const MARGIN = { left: 70, right: 14, top: 12, bottom: 26 };

let chartCount = 0;

/** Sums of each series, the smallest folded into "other" past MAX_SERIES. */
export function foldSeries(series, max = MAX_SERIES) {
  const withTotal = series.map((s) => ({ ...s, total: s.values.reduce((a, b) => a + b, 0) }));
  withTotal.sort((a, b) => b.total - a.total);
  if (withTotal.length <= max) return withTotal;
  const kept = withTotal.slice(0, max - 1);
  const rest = withTotal.slice(max - 1);
  const values = rest[0].values.map((_, i) => rest.reduce((sum, s) => sum + s.values[i], 0));
  kept.push({ name: `other (${rest.length})`, values, total: values.reduce((a, b) => a + b, 0), other: true });
  return kept;
}

/**
 * A <figure> with the chart. `days`: ["2026-11-01", ...]; `series`: [{name, values}] with a
 * number per day; `format(v)`: a value for people (hover, table); `axis(v)`: a short one.
 */
export function timeChart({ title, days, series, format, axis = format, unitLabel = "" }) {
  const id = `chart-${++chartCount}`;
  const shown = foldSeries(series);
  shown.forEach((s, i) => { s.colour = `c${i % COLOURS}`; });
  const hidden = new Set();
  let mode = "linear";
  let cursor = null;
  let width = 0;

  const plot = h("div", {
    class: "plot", tabindex: "0", role: "group",
    "aria-label": `${title}: a chart of ${days.length} days. Left and Right arrows move from day to day.`,
  });
  const tooltip = h("div", { class: "tooltip", hidden: true, "aria-live": "polite" });
  const graphs = h("div", { class: "graphs" });
  plot.append(graphs, tooltip);

  const modes = h("fieldset", { class: "scale" }, h("legend", {}, "Scale"),
    [["linear", "Linear"], ["log", "Log"], ["split", "Per series"]].map(([value, label]) =>
      h("label", { class: "radio" }, h("input", {
        type: "radio", name: `${id}-scale`, value, checked: value === mode,
        onchange: () => { mode = value; draw(); },
      }), label)));

  const legend = h("ul", { class: "legend", "aria-label": "Series: press one to hide or show it" },
    shown.map((s) => {
      const button = h("button", { type: "button", class: "legend-item", "aria-pressed": "true" },
        h("span", { class: `swatch ${s.colour}`, "aria-hidden": "true" }), s.name);
      button.addEventListener("click", () => {
        if (hidden.has(s.name)) hidden.delete(s.name);
        else hidden.add(s.name);
        button.setAttribute("aria-pressed", String(!hidden.has(s.name)));
        draw();
      });
      return h("li", {}, button);
    }));

  const figure = h("figure", { class: "chart", id },
    h("figcaption", {}, title, unitLabel ? h("span", { class: "dim" }, ` · ${unitLabel}`) : null),
    h("div", { class: "chart-controls" }, modes, legend), plot,
    h("details", { class: "chart-table" }, h("summary", {}, "The numbers as a table"),
      numbersTable(days, shown, format, title)));

  function visible() {
    return shown.filter((s) => !hidden.has(s.name));
  }

  function draw() {
    width = plot.clientWidth || 600;
    const list = visible();
    graphs.replaceChildren();
    if (!days.length) {
      graphs.append(h("p", { class: "dim" }, "no days in this range"));
      return;
    }
    if (mode === "split") {
      for (const s of list) {
        graphs.append(h("div", { class: "small-title" }, h("span", { class: `swatch ${s.colour}`, "aria-hidden": "true" }), s.name));
        graphs.append(drawSvg([s], "linear", 120));
      }
      if (!list.length) graphs.append(h("p", { class: "dim" }, "every series is hidden: press one in the legend"));
    } else {
      graphs.append(drawSvg(list, mode, Math.max(180, Math.min(320, Math.round(width * 0.42)))));
    }
    showTooltip();
  }

  function drawSvg(list, scaleMode, height) {
    const inner = { w: Math.max(40, width - MARGIN.left - MARGIN.right), h: height - MARGIN.top - MARGIN.bottom };
    const root = svg("svg", { class: "graph", width, height, viewBox: `0 0 ${width} ${height}`, "aria-hidden": "true" });
    const n = days.length;
    const x = (i) => MARGIN.left + ((i + 0.5) * inner.w) / n;
    const all = list.flatMap((s) => s.values);
    const max = Math.max(0, ...all);
    let y;
    let ticks;
    if (scaleMode === "log") {
      const positive = all.filter((v) => v > 0);
      const lo = positive.length ? 10 ** Math.floor(Math.log10(Math.min(...positive))) : 1;
      const hi = positive.length ? 10 ** Math.ceil(Math.log10(max) + 1e-9) : 10;
      const span = Math.log10(hi) - Math.log10(lo) || 1;
      y = (v) => (v > 0 ? MARGIN.top + inner.h * (1 - (Math.log10(v) - Math.log10(lo)) / span) : null);
      ticks = [];
      const step = Math.max(1, Math.ceil(span / 5));
      for (let p = Math.log10(lo); p <= Math.log10(hi) + 1e-9; p += step) ticks.push(10 ** p);
    } else {
      const step = niceStep(max);
      const top = Math.max(1, Math.ceil(max / step - 1e-9)) * step;
      y = (v) => MARGIN.top + inner.h * (1 - v / top);
      ticks = [];
      for (let i = 0; i * step <= top * (1 + 1e-9); i++) ticks.push(Number((i * step).toPrecision(12)));
    }
    for (const t of ticks) {
      const ty = y(t);
      root.append(svg("line", { class: "grid", x1: MARGIN.left, x2: MARGIN.left + inner.w, y1: ty, y2: ty }));
      root.append(svg("text", { class: "axis", x: MARGIN.left - 6, y: ty + 4, "text-anchor": "end" }, axis(t)));
    }
    const every = Math.max(1, Math.ceil(n / Math.max(1, Math.floor(inner.w / 64))));
    for (let i = 0; i < n; i += every) {
      root.append(svg("text", { class: "axis", x: x(i), y: height - 6, "text-anchor": "middle" }, dayLabel(days[i])));
    }
    for (const s of list) {
      let path = "";
      let pen = false;
      s.values.forEach((v, i) => {
        const py = y(v);
        if (py === null) { pen = false; return; }
        path += `${pen ? "L" : "M"}${x(i).toFixed(1)},${py.toFixed(1)}`;
        pen = true;
      });
      if (path) root.append(svg("path", { class: `series ${s.colour}`, d: path }));
      if (n <= 62) {
        s.values.forEach((v, i) => {
          const py = y(v);
          if (py !== null) root.append(svg("circle", { class: `point ${s.colour}`, cx: x(i), cy: py, r: i === cursor ? 4.5 : 2.5 }));
        });
      }
    }
    if (cursor !== null) {
      root.append(svg("line", { class: "cursor", x1: x(cursor), x2: x(cursor), y1: MARGIN.top, y2: MARGIN.top + inner.h }));
    }
    const overlay = svg("rect", { class: "overlay", x: MARGIN.left, y: 0, width: inner.w, height });
    overlay.addEventListener("pointermove", (e) => {
      const box = root.getBoundingClientRect();
      const i = Math.floor(((e.clientX - box.left - MARGIN.left) / inner.w) * n);
      setCursor(Math.min(n - 1, Math.max(0, i)));
    });
    overlay.addEventListener("pointerleave", () => setCursor(null));
    root.append(overlay);
    return root;
  }

  function setCursor(i) {
    if (i === cursor) return;
    cursor = i;
    draw();
  }

  function showTooltip() {
    if (cursor === null) {
      tooltip.hidden = true;
      return;
    }
    const list = visible().map((s) => ({ s, v: s.values[cursor] })).sort((a, b) => b.v - a.v);
    const sum = list.reduce((a, b) => a + b.v, 0);
    tooltip.replaceChildren(h("div", { class: "tooltip-day" }, dayLabel(days[cursor]), ` (${days[cursor]})`),
      ...list.map(({ s, v }) => h("div", { class: "tooltip-row" },
        h("span", { class: `swatch ${s.colour}`, "aria-hidden": "true" }),
        h("span", { class: "tooltip-name" }, s.name), h("span", { class: "tooltip-value" }, format(v)))),
      list.length > 1 ? h("div", { class: "tooltip-row tooltip-sum" }, h("span", { class: "tooltip-name" }, "all shown"),
        h("span", { class: "tooltip-value" }, format(sum))) : "");
    tooltip.hidden = false;
    // Beside the day's line, on the side with room.
    const px = MARGIN.left + ((cursor + 0.5) * (width - MARGIN.left - MARGIN.right)) / days.length;
    const right = px < width / 2;
    tooltip.classList.toggle("to-left", !right);
    tooltip.style.left = right ? `${Math.round(px + 12)}px` : "";
    tooltip.style.right = right ? "" : `${Math.round(width - px + 12)}px`;
  }

  plot.addEventListener("keydown", (e) => {
    const n = days.length;
    if (!n) return;
    const moves = { ArrowRight: 1, ArrowLeft: -1 };
    if (e.key in moves) setCursor(cursor === null ? (e.key === "ArrowRight" ? 0 : n - 1) : Math.min(n - 1, Math.max(0, cursor + moves[e.key])));
    else if (e.key === "Home") setCursor(0);
    else if (e.key === "End") setCursor(n - 1);
    else if (e.key === "Escape") setCursor(null);
    else return;
    e.preventDefault();
  });
  plot.addEventListener("blur", () => setCursor(null));

  // Drawn to the box's width, again whenever that changes (a phone turned, a window resized).
  const observer = new ResizeObserver(() => {
    if (plot.clientWidth && plot.clientWidth !== width) draw();
  });
  observer.observe(plot);
  return figure;
}

/** A round step (1, 2 or 5 times a power of ten) that splits 0..max into at most 5 parts. */
function niceStep(max) {
  if (!(max > 0)) return 1;
  const rough = max / 5;
  const power = 10 ** Math.floor(Math.log10(rough));
  for (const m of [1, 2, 5, 10]) {
    if (m * power >= rough) return m * power;
  }
  return 10 * power;
}

function numbersTable(days, series, format, title) {
  const columns = [{ label: "day", cell: (row) => row.day },
    ...series.map((s, i) => ({ label: s.name, num: true, cell: (row) => format(row.values[i]) })),
    { label: "all", num: true, cell: (row) => format(row.values.reduce((a, b) => a + b, 0)) }];
  const rows = days.map((day, d) => ({ day, values: series.map((s) => s.values[d]) }));
  rows.push({ day: "total", values: series.map((s) => s.total) });
  return table(columns, rows, { label: `${title}, by day` });
}
