// Building the console's DOM. Everything that comes from data (usernames, key names, model
// names, role names, error messages) becomes text nodes: `h` sets attributes with
// setAttribute and children as text, and no module of the console assigns innerHTML. Styles
// are classes from console.css; the few computed sizes (a bar's fill, the chart's tooltip) are
// CSSOM writes (`el.style.width = ...`), which the page's CSP (style-src 'self') allows.

import { ApiError } from "./api.js";

/**
 * An element: `h("button", {class: "act", type: "button", onclick: f}, "Revoke")`. Attributes
 * starting with `on` are listeners; `false`/null/undefined ones are left out; `true` sets an
 * empty one. Children: strings and numbers (as text), nodes, arrays of them, or null.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "value") el.value = value;
    else if (name === "checked") el.checked = Boolean(value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** A failure as a sentence and what to do about it. */
export function failure(err) {
  const box = h("div", { class: "failure", role: "alert" });
  if (err instanceof ApiError && err.status === 401) {
    box.append(h("p", {}, "Your session has ended (signed out elsewhere, or the password changed)."),
      h("p", {}, h("a", { href: "/console" }, "Sign in again")));
  } else {
    box.append(h("p", {}, err instanceof ApiError ? err.message : `something went wrong in the page: ${err.message || err}`));
    if (err.hint) box.append(h("p", { class: "dim" }, err.hint));
  }
  return box;
}

const SVG_NS = "http://www.w3.org/2000/svg";

/** An SVG element, with attributes and an optional text. */
export function svg(tag, attrs = {}, text = null) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined) el.setAttribute(name, String(value));
  }
  if (text !== null) el.textContent = text;
  return el;
}

/** A table in its own scrolling box (a wide table never widens the page). `columns`:
 * [{label, cell(row) -> node|string, num?: bool}]. */
export function table(columns, rows, { caption = "", empty = "nothing yet", label = "" } = {}) {
  const head = h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label)));
  const body = rows.length
    ? rows.map((row) => h("tr", {}, columns.map((c) => h("td", { class: c.num ? "num" : null }, c.cell(row)))))
    : [h("tr", {}, h("td", { colspan: columns.length, class: "empty" }, empty))];
  const t = h("table", {}, caption ? h("caption", {}, caption) : null, h("thead", {}, head), h("tbody", {}, body));
  // A focusable region, so a keyboard can scroll a table wider than its box.
  return h("div", { class: "table-box", tabindex: "0", role: "region", "aria-label": label || caption || "table" }, t);
}

/** A labelled form field: <label>text <input ...></label> laid out by console.css. */
export function field(label, control, note = "") {
  return h("label", { class: "field" }, h("span", { class: "field-label" }, label), control,
    note ? h("span", { class: "field-note" }, note) : null);
}

/** A status line under a form or a page: `tone` is "ok", "error" or "dim". */
export function say(el, text, tone = "dim") {
  el.className = `status ${tone}`;
  el.textContent = text;
}

/** A copy button for `text` (falls back to selecting `target` where no clipboard is allowed). */
export function copyButton(text, target, label = "Copy") {
  const button = h("button", { type: "button", class: "copy" }, label);
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch {
      window.getSelection().selectAllChildren(target);
      button.textContent = "Selected: Ctrl+C copies";
    }
  });
  return button;
}
