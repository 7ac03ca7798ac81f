// A search field that names one thing among thousands (a user, a key): the ARIA 1.2 combobox
// pattern. Typing asks the server for a few matches (never the whole list) and shows them in a
// listbox under the field; Down/Up move through them, Enter or a click chooses one, Escape
// closes the list. The input keeps the focus throughout (the options are pointed at with
// aria-activedescendant), so a screen reader follows and the form's other keys still work.
// Every suggestion is text from data, built with console-dom's `h` (no markup from data).
//
// An answer to an older query (typing fast) is dropped; what was chosen is forgotten as soon
// as the text changes, so the value sent is always the one whose name is shown.

import { h } from "./console-dom.js";

const WAIT_MS = 200; // typing pauses this long before the server is asked

/**
 * `find(text)` -> Promise<[{value, text, detail?}]> (a few matches for what was typed);
 * `label`: the field's label; `note`: a line under it. Returns {element, input, label,
 * value (the chosen value or null), text (what is typed), choose(option), clear(),
 * onChange(fn)} where `fn(option|null)` is told of each choice and of its loss.
 */
export function picker({ id, label, note = "", find, placeholder = "" }) {
  const listId = `${id}-options`;
  const noteId = `${id}-note`;
  const input = h("input", {
    id, type: "text", role: "combobox", autocomplete: "off", spellcheck: "false",
    "aria-autocomplete": "list", "aria-expanded": "false", "aria-controls": listId,
    "aria-describedby": noteId, placeholder, maxlength: "100",
  });
  const labelEl = h("label", { for: id, class: "field-label" }, label);
  const list = h("ul", { id: listId, role: "listbox", class: "pick-list", "aria-label": label, hidden: true });
  const chosenLine = h("span", { id: noteId, class: "field-note pick-note", "aria-live": "polite" }, note);
  const element = h("div", { class: "field pick" }, labelEl, h("div", { class: "pick-box" }, input, list), chosenLine);

  let options = [];
  let active = -1;
  let chosen = null;
  let asked = 0;
  let timer = 0;
  const listeners = [];

  function tell() {
    for (const fn of listeners) fn(chosen);
  }

  function close() {
    list.hidden = true;
    input.setAttribute("aria-expanded", "false");
    input.removeAttribute("aria-activedescendant");
    active = -1;
  }

  function mark(index) {
    active = index;
    [...list.children].forEach((li, i) => li.setAttribute("aria-selected", String(i === index)));
    if (index >= 0 && list.children[index]) {
      input.setAttribute("aria-activedescendant", list.children[index].id);
      list.children[index].scrollIntoView({ block: "nearest" });
    } else {
      input.removeAttribute("aria-activedescendant");
    }
  }

  function show(found) {
    options = found;
    if (!found.length) {
      list.replaceChildren(h("li", { class: "pick-empty", role: "option", "aria-disabled": "true", id: `${id}-none` },
        input.value.trim() ? "nothing matches" : "nothing to choose"));
    } else {
      list.replaceChildren(...found.map((option, i) => {
        const li = h("li", { id: `${id}-option-${i}`, role: "option", "aria-selected": "false", "data-value": String(option.value) },
          h("span", { class: "pick-text" }, option.text), option.detail ? h("span", { class: "dim pick-detail" }, ` ${option.detail}`) : null);
        li.addEventListener("mousedown", (e) => e.preventDefault()); // the input keeps the focus
        li.addEventListener("click", () => choose(option));
        return li;
      }));
    }
    list.hidden = false;
    input.setAttribute("aria-expanded", "true");
    mark(-1);
  }

  async function search() {
    clearTimeout(timer);
    const ask = ++asked;
    let found;
    try {
      found = await find(input.value.trim());
    } catch (err) {
      if (ask !== asked) return;
      chosenLine.textContent = err.message || String(err);
      chosenLine.className = "field-note pick-note error";
      close();
      return;
    }
    if (ask !== asked || document.activeElement !== input) return;
    show(found);
  }

  function choose(option) {
    chosen = option;
    input.value = option.text;
    chosenLine.className = "field-note pick-note ok";
    chosenLine.textContent = `chosen: ${option.text}${option.detail ? ` ${option.detail}` : ""}`;
    input.dataset.value = String(option.value);
    asked += 1; // an answer still on its way must not reopen the list
    close();
    tell();
  }

  function forget() {
    if (chosen === null) return;
    chosen = null;
    delete input.dataset.value;
    chosenLine.className = "field-note pick-note";
    chosenLine.textContent = note;
    tell();
  }

  input.addEventListener("input", () => {
    forget();
    clearTimeout(timer);
    timer = setTimeout(search, WAIT_MS);
  });
  input.addEventListener("focus", () => { if (chosen === null) search(); });
  input.addEventListener("blur", () => { clearTimeout(timer); asked += 1; close(); });
  input.addEventListener("keydown", (e) => {
    const open = !list.hidden;
    if (e.key === "ArrowDown" || e.key === "ArrowUp") {
      e.preventDefault();
      if (!open || !options.length) {
        search();
        return;
      }
      const step = e.key === "ArrowDown" ? 1 : -1;
      mark(active < 0 ? (step > 0 ? 0 : options.length - 1) : (active + step + options.length) % options.length);
    } else if (e.key === "Enter" && open && active >= 0) {
      e.preventDefault(); // choosing is not submitting the form
      choose(options[active]);
    } else if (e.key === "Escape" && open) {
      e.preventDefault();
      close();
    }
  });

  return {
    element, input, label: labelEl,
    get value() { return chosen ? chosen.value : null; },
    get text() { return input.value.trim(); },
    choose,
    clear() { input.value = ""; forget(); close(); },
    onChange(fn) { listeners.push(fn); },
    /** Ask again (what was typed, with whatever `find` now depends on). */
    refresh() { if (document.activeElement === input) search(); },
  };
}
