// Start-up: wire the terminal to the commands, say hello, and learn the server's mode, its
// roles, and who is signed in.

import { SIGN_IN_HINT, loadAccount } from "./account.js";
import { getHealth, getRoles } from "./api.js";
import { runCommand } from "./commands.js";
import { complete } from "./complete.js";
import { usageHint } from "./hint.js";
import { settings } from "./store.js";
import { Terminal } from "./terminal.js";
import { historyLine, maskSecrets } from "./user.js";

// `user`: who is signed in (null: nobody); `auth`: what the server asks of a caller (account.js).
const app = { term: null, settings: settings.load(), roles: [], health: null, user: null, auth: "" };

function $(id) {
  return document.getElementById(id);
}

app.term = new Terminal({
  output: $("output"),
  input: $("input"),
  secret: $("secret"),
  promptUser: $("prompt-user"),
  promptRole: $("prompt-role"),
  stop: $("stop"),
  banner: $("banner"),
  hint: $("hint"),
  onCommand: (line) => runCommand(line, app),
  onComplete: (before) => complete(before, app),
  onHint: usageHint,
  mask: maskSecrets,
  remember: historyLine,
});

const { term } = app;
term.setRole(app.settings.role);
term.print("GPT Terminal: talk to a model from your browser.", "heading");
term.print("Type help for the commands, or try: gpt chat -r ikun hi", "dim");
term.input.focus();

const health = getHealth()
  .then((health) => {
    app.health = health;
    if (health.upstream === "demo") {
      term.showBanner("Demo mode: a built-in demo answers, not a model (the server has no OPENAI_API_KEY).");
    }
  })
  .catch((err) => term.error(`could not ask the server how it runs: ${err.message}`, err.hint || "reload the page to try again"));

// The session cookie goes with this request too, so a signed-in user's own roles come along.
const roles = getRoles({ token: app.settings.token })
  .then((roles) => {
    app.roles = Array.isArray(roles) ? roles : [];
  })
  .catch(() => {
    // `gpt role` asks again and explains a failure; Tab completion just knows fewer names.
  });

const account = loadAccount(app)
  .then(() => {
    if (app.user) term.print(`signed in as ${app.user.username} · sign out: user logout`, "dim");
    else if (app.auth === "users") term.print(`This server has accounts: ${SIGN_IN_HINT}.`, "dim");
  })
  .catch(() => {
    // The server could not say (health explains an unreachable one); `user` asks again.
  });

// Marked once the server has been asked how it runs, which roles it has and who is signed in
// (tests wait on it).
Promise.allSettled([health, roles, account]).then(() => {
  document.documentElement.dataset.ready = "true";
});
