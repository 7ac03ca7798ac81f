// Start-up: wire the terminal to the commands, say hello, and learn the server's mode and roles.

import { getHealth, getRoles } from "./api.js";
import { isRemembered, runCommand } from "./commands.js";
import { complete } from "./complete.js";
import { usageHint } from "./hint.js";
import { settings } from "./store.js";
import { Terminal } from "./terminal.js";

const app = { term: null, settings: settings.load(), roles: [], health: null };

function $(id) {
  return document.getElementById(id);
}

app.term = new Terminal({
  output: $("output"),
  input: $("input"),
  promptRole: $("prompt-role"),
  stop: $("stop"),
  banner: $("banner"),
  hint: $("hint"),
  onCommand: (line) => runCommand(line, app),
  onComplete: (before) => complete(before, app),
  onHint: usageHint,
  remember: isRemembered,
});

const { term } = app;
term.setRole(app.settings.role);
term.print("GPT Terminal: talk to a model from your browser.", "heading");
term.print("Type help for the commands, or try: gpt chat -r ikun hi", "dim");
term.input.focus();

const health = getHealth({ token: app.settings.token })
  .then((health) => {
    app.health = health;
    if (health.upstream === "demo") {
      term.showBanner("Demo mode: a built-in demo answers, not a model (the server has no OPENAI_API_KEY).");
    }
  })
  .catch((err) => term.error(`could not ask the server how it runs: ${err.message}`, err.hint || "reload the page to try again"));

const roles = getRoles({ token: app.settings.token })
  .then((roles) => {
    app.roles = Array.isArray(roles) ? roles : [];
  })
  .catch(() => {
    // `gpt role` asks again and explains a failure; Tab completion just knows fewer names.
  });

// Marked once the server has been asked how it runs and which roles it has (tests wait on it).
Promise.allSettled([health, roles]).then(() => {
  document.documentElement.dataset.ready = "true";
});
