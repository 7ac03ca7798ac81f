// The terminal's screen and keyboard: an output log, a prompt, command history on Up/Down,
// Tab completion, Ctrl+C and Ctrl+L, a hint line under the prompt, questions a command asks
// (a secret one, such as a password, in a masked field whose answer is never shown), and a
// view that follows the newest output. What a command does is not its business: it calls
// `onCommand(line)`, `onComplete(textBeforeCaret)` and `onHint(line)`; `mask(line)` is what
// the output shows of a typed line, and `remember(line)` what the history keeps of it (null:
// nothing), so a secret typed inline is neither shown nor kept.

import { commands as commandStore } from "./store.js";

const FOLLOW_SLACK_PX = 48; // this close to the bottom counts as "at the bottom"

export class Terminal {
  constructor({ output, input, secret, promptUser, promptRole, stop, banner, hint, onCommand, onComplete, onHint = () => null,
    mask = (line) => line, remember = (line) => line }) {
    this.output = output;
    this.input = input;
    this.secret = secret; // <input type="password">, shown instead of `input` for a secret question
    this.promptUser = promptUser;
    this.promptRole = promptRole;
    this.stopButton = stop;
    this.banner = banner;
    this.hint = hint;
    this.onCommand = onCommand;
    this.onComplete = onComplete;
    this.onHint = onHint;
    this.mask = mask;
    this.remember = remember;
    this.history = commandStore.load();
    this.historyIndex = this.history.length;
    this.draft = "";
    this.running = null; // {stop()} while a command runs
    this.question = null; // {hint(text), resolve(answer), secret} while a command waits for an answer
    this.role = "";
    this.follow = true;
    this.tabLeaves = false;
    this.hintFrame = 0;
    this.hintShown = null;
    this.bind();
  }

  bind() {
    this.input.addEventListener("keydown", (e) => this.onInputKey(e));
    this.input.addEventListener("input", () => this.changed());
    this.secret.addEventListener("keydown", (e) => this.onSecretKey(e));
    document.addEventListener("keydown", (e) => this.onGlobalKey(e));
    document.addEventListener("click", (e) => this.onClick(e));
    this.stopButton.addEventListener("click", () => this.interrupt());
    window.addEventListener("scroll", () => {
      this.follow = this.atBottom();
    }, { passive: true });
    const observer = new ResizeObserver(() => {
      if (this.follow) this.scrollToEnd();
    });
    observer.observe(this.output);
  }

  // ---- output -------------------------------------------------------------------------------

  /** A new block in the output; `text` is set as text, never as HTML. */
  block(className = "line", text = null, tag = "div") {
    const el = document.createElement(tag);
    el.className = className;
    if (text !== null) el.textContent = text;
    this.output.appendChild(el);
    return el;
  }

  print(text, className = "line") {
    return this.block(className, text);
  }

  /** A one-line explanation and, below it, a hint of what to do instead. */
  error(message, hint = "") {
    const el = this.block("error");
    el.appendChild(labelled("error", message));
    if (hint) el.appendChild(labelled("hint", hint));
    return el;
  }

  /** A line after the prompt as it is now. */
  echo(line) {
    const el = this.block("echo");
    const prompt = document.createElement("span");
    prompt.className = "echo-prompt";
    const user = this.promptUser.hidden ? "" : `${this.promptUser.textContent} `;
    prompt.textContent = `${user}${this.promptRole.textContent} ❯ `;
    const text = document.createElement("span");
    text.className = "echo-text";
    text.textContent = line;
    el.append(prompt, text);
    return el;
  }

  /** A command line as typed, with any secret in it masked. */
  echoCommand(line) {
    return this.echo(this.mask(line));
  }

  clear() {
    this.output.replaceChildren();
    this.follow = true;
    this.scrollToEnd();
  }

  showBanner(text) {
    this.banner.textContent = text;
    this.banner.title = text; // a narrow screen cuts the line short
    this.banner.hidden = false;
  }

  setRole(role) {
    this.role = role;
    if (!this.question) this.promptRole.textContent = role;
  }

  /** Show who is signed in before the role in the prompt ("" or null: nobody). */
  setUser(name) {
    const shown = document.createElement("span");
    shown.className = "prompt-user-name"; // a long name is cut short; the title has it whole
    shown.textContent = name || "";
    this.promptUser.replaceChildren(...(name ? [shown, " ·"] : []));
    this.promptUser.title = name ? `signed in as ${name}` : "";
    this.promptUser.hidden = !name;
  }

  atBottom() {
    const doc = document.scrollingElement || document.documentElement;
    return doc.scrollHeight - (doc.scrollTop + window.innerHeight) <= FOLLOW_SLACK_PX;
  }

  scrollToEnd() {
    const doc = document.scrollingElement || document.documentElement;
    doc.scrollTop = doc.scrollHeight;
  }

  /** Called after output grew: keep the newest line in view unless the reader scrolled up. */
  grew() {
    if (this.follow) this.scrollToEnd();
  }

  // ---- running commands ---------------------------------------------------------------------

  async submit() {
    const line = this.input.value;
    this.input.value = "";
    this.changed();
    this.historyIndex = this.history.length;
    this.draft = "";
    this.follow = true;
    this.echoCommand(line);
    this.scrollToEnd();
    if (!line.trim()) return;
    const kept = this.remember(line);
    if (kept) {
      if (this.history[this.history.length - 1] !== kept) this.history.push(kept);
      commandStore.add(kept);
      this.historyIndex = this.history.length;
    }
    await this.onCommand(line.trim());
  }

  /** Mark a command as running; `stop` is called by Ctrl+C or the Stop button. */
  busy(stop) {
    this.running = { stop };
    this.stopButton.hidden = false;
    document.body.classList.add("busy");
  }

  idle() {
    this.running = null;
    this.stopButton.hidden = true;
    document.body.classList.remove("busy");
    this.grew();
    if (!isTouch()) this.field().focus({ preventScroll: true });
  }

  /** Where keys go now: the masked field while a secret is asked for, else the prompt. */
  field() {
    return this.question && this.question.secret ? this.secret : this.input;
  }

  /**
   * Ask for an answer at the prompt, which shows `label` instead of the role: resolves with the
   * text on Enter (Shift+Enter adds a line), or null on Ctrl+C. `hint(text)` fills the hint
   * line as the answer is typed; `value` starts the answer (to correct a refused one).
   * `secret`: the answer is typed into a masked one-line field, is never shown (not even its
   * length: its echo is empty), and `hint` is given no text; `autocomplete` tells a password
   * manager what is asked ("current-password", "new-password").
   */
  ask({ label, hint = () => null, value = "", secret = false, autocomplete = "off" }) {
    return new Promise((resolve) => {
      this.question = { hint, resolve, secret };
      this.promptRole.textContent = label;
      if (secret) {
        this.secret.value = "";
        this.secret.autocomplete = autocomplete;
        this.input.hidden = true;
        this.secret.hidden = false;
        this.input.value = "";
      } else {
        this.input.value = value;
      }
      this.changed();
      if (!secret) this.input.setSelectionRange(value.length, value.length);
      if (!isTouch()) this.field().focus({ preventScroll: true });
      this.follow = true;
      this.grew();
    });
  }

  /** End the question with `answer` (null: cancelled), echoing it after the question's label
   * (a secret answer: nothing but ^C when cancelled). */
  answer(answer) {
    const { resolve, secret } = this.question;
    const typed = secret ? "" : this.input.value;
    this.echo(answer === null ? `${typed}^C` : secret ? "" : answer);
    if (secret) {
      this.secret.value = "";
      this.secret.hidden = true;
      this.input.hidden = false;
      if (!isTouch()) this.input.focus({ preventScroll: true });
    }
    this.question = null;
    this.promptRole.textContent = this.role;
    this.input.value = "";
    this.changed();
    this.follow = true;
    this.scrollToEnd();
    resolve(answer);
  }

  interrupt() {
    if (this.running) {
      this.running.stop();
      return true;
    }
    return false;
  }

  // ---- keyboard -----------------------------------------------------------------------------

  onGlobalKey(e) {
    if (!e.ctrlKey || e.metaKey || e.altKey) return;
    const key = e.key.toLowerCase();
    if (key === "c") {
      if (hasSelection(this.input)) return; // a person copying text: let the browser copy
      e.preventDefault();
      if (this.question) this.answer(null);
      else if (!this.interrupt()) {
        // No reply running: a shell abandons the line being typed.
        this.echo(`${this.mask(this.input.value)}^C`);
        this.input.value = "";
        this.changed();
        this.historyIndex = this.history.length;
      }
      this.follow = true;
      this.scrollToEnd();
    } else if (key === "l") {
      e.preventDefault();
      this.clear();
    }
  }

  onSecretKey(e) {
    if (e.key !== "Tab") this.tabLeaves = false;
    if (e.isComposing || !this.question) return;
    if (e.key === "Enter") {
      e.preventDefault();
      this.answer(this.secret.value);
    } else if (e.key === "Escape") {
      this.tabLeaves = true;
    } else if (e.key === "Tab" && !this.tabLeaves) {
      e.preventDefault();
    }
  }

  onInputKey(e) {
    if (e.key !== "Tab") this.tabLeaves = false;
    if (e.isComposing) return;
    if (this.question) {
      // An answer: Enter gives it, arrows move in it, Tab completes nothing.
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        this.answer(this.input.value);
      } else if (e.key === "Escape") {
        this.tabLeaves = true;
      } else if (e.key === "Tab" && !this.tabLeaves) {
        e.preventDefault();
      }
      return;
    }
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      if (this.running) {
        this.error("a reply is still running", "wait for it, or stop it with Ctrl+C (or the Stop button)");
        this.grew();
        return;
      }
      this.submit();
    } else if (e.key === "ArrowUp" && !e.shiftKey && !this.input.value.slice(0, this.input.selectionStart).includes("\n")) {
      if (this.walkHistory(-1)) e.preventDefault();
    } else if (e.key === "ArrowDown" && !e.shiftKey && !this.input.value.slice(this.input.selectionEnd).includes("\n")) {
      if (this.walkHistory(1)) e.preventDefault();
    } else if (e.key === "Escape") {
      this.tabLeaves = true; // the next Tab moves focus out, for keyboard users
    } else if (e.key === "Tab" && !e.shiftKey && !e.ctrlKey && !e.altKey) {
      if (this.tabLeaves) return;
      e.preventDefault();
      this.complete();
    }
  }

  walkHistory(step) {
    const next = this.historyIndex + step;
    if (next < 0 || next > this.history.length) return false;
    if (this.historyIndex === this.history.length) this.draft = this.input.value;
    this.historyIndex = next;
    this.input.value = next === this.history.length ? this.draft : this.history[next];
    this.changed();
    const end = this.input.value.length;
    this.input.setSelectionRange(end, end);
    return true;
  }

  complete() {
    const caret = this.input.selectionStart;
    const before = this.input.value.slice(0, caret);
    const after = this.input.value.slice(this.input.selectionEnd);
    const result = this.onComplete(before);
    if (!result) return;
    if (result.text !== before) {
      this.input.value = result.text + after;
      this.input.setSelectionRange(result.text.length, result.text.length);
      this.changed();
    } else if (result.choices.length > 1) {
      // Nothing more to add: show the choices, as a shell does on a second Tab.
      this.echoCommand(this.input.value);
      this.print(result.choices.join("   "), "choices");
      this.follow = true;
      this.grew();
    }
  }

  /** The input's text changed (typed or set): fit its height, and renew the hint line. */
  changed() {
    this.resizeInput();
    // At most one hint per frame, however fast the keys come; the work is one pass over the line.
    if (!this.hintFrame) this.hintFrame = requestAnimationFrame(() => this.showHint());
  }

  showHint() {
    this.hintFrame = 0;
    const text = this.question && this.question.secret ? "" : this.input.value;
    const hint = this.question ? this.question.hint(text) : text.trim() ? this.onHint(text) : null;
    const key = hint ? `${hint.usage}\n${hint.about || ""}\n${hint.warn ? 1 : 0}` : "";
    if (key === this.hintShown) return; // unchanged: leave the DOM alone
    this.hintShown = key;
    this.hint.classList.toggle("empty", !hint);
    this.hint.classList.toggle("warn", Boolean(hint && hint.warn));
    const [usage, about] = this.hint.children;
    usage.textContent = hint ? hint.usage : "";
    about.textContent = hint && hint.about ? hint.about : "";
    if (this.follow) this.scrollToEnd(); // the hint is the last line: keep it in view
  }

  resizeInput() {
    // The textarea grows with its text (CSSOM writes are allowed under the page's CSP).
    this.input.style.height = "auto";
    this.input.style.height = `${this.input.scrollHeight}px`;
  }

  onClick(e) {
    if (e.target.closest("a, button, input, textarea, select, summary")) return;
    if (!window.getSelection().isCollapsed) return; // selecting text to copy
    const field = this.field();
    if (document.activeElement !== field) field.focus({ preventScroll: true });
  }
}

function labelled(kind, text) {
  const line = document.createElement("div");
  line.className = `${kind}-line`;
  const label = document.createElement("span");
  label.className = `${kind}-label`;
  label.textContent = `${kind}: `;
  const body = document.createElement("span");
  body.textContent = text;
  line.append(label, body);
  return line;
}

function hasSelection(input) {
  if (document.activeElement === input && input.selectionStart !== input.selectionEnd) return true;
  const selection = window.getSelection();
  return Boolean(selection && !selection.isCollapsed && selection.toString());
}

function isTouch() {
  return window.matchMedia("(pointer: coarse)").matches;
}
