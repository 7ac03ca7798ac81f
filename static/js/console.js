// The console (/console): a signed-in user's keys, budgets and usage; an admin's overview,
// users, every key, budgets, the ledger and the upstreams. One page, its views chosen by the
// address's fragment (#usage, #admin/ledger, ...), so Back and bookmarks work and every view
// is a link a keyboard reaches. Who is signed in decides what the navigation offers; the
// server decides what each route answers (an admin route refuses a non-admin whatever the
// page shows). Views render into <main> and mark it data-loaded when done (tests wait on it).

import { failure, h, say } from "./console-dom.js";
import { ApiError, me, signIn, signOut } from "./console-data.js";
import { budgetsPage, keysPage, usagePage } from "./console-user.js";
import { adminBudgetsPage, adminKeysPage, ledgerPage, overviewPage, upstreamsPage, usersPage } from "./console-admin.js";

const USER_PAGES = [
  { hash: "usage", label: "Usage", render: usagePage },
  { hash: "budgets", label: "Budgets", render: budgetsPage },
  { hash: "keys", label: "Keys", render: keysPage },
];
const ADMIN_PAGES = [
  { hash: "admin/overview", label: "Overview", render: overviewPage },
  { hash: "admin/users", label: "Users", render: usersPage },
  { hash: "admin/keys", label: "All keys", render: adminKeysPage },
  { hash: "admin/budgets", label: "All budgets", render: adminBudgetsPage },
  { hash: "admin/ledger", label: "Ledger", render: ledgerPage },
  { hash: "admin/upstreams", label: "Upstreams", render: upstreamsPage },
];

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");
const state = { me: null, leave: [] };

function pages() {
  if (!state.me || !state.me.user) return [];
  return state.me.user.admin ? [...USER_PAGES, ...ADMIN_PAGES] : USER_PAGES;
}

function current() {
  const hash = decodeURIComponent(location.hash.slice(1)).split("?")[0];
  const list = pages();
  return list.find((p) => p.hash === hash) || list[0];
}

/** The fragment's parameters (#admin/keys?user=3). */
function hashParams() {
  const at = location.hash.indexOf("?");
  return new URLSearchParams(at >= 0 ? location.hash.slice(at + 1) : "");
}

function drawNav(active) {
  const list = pages();
  nav.hidden = !list.length;
  const group = (items, label) => h("ul", { class: "nav-group", "aria-label": label }, items.map((p) =>
    h("li", {}, h("a", { href: `#${p.hash}`, "aria-current": p === active ? "page" : null }, p.label))));
  const parts = [group(USER_PAGES, "Yours")];
  if (list.length > USER_PAGES.length) parts.push(h("span", { class: "nav-sep dim" }, "admin:"), group(ADMIN_PAGES, "Admin"));
  nav.replaceChildren(...parts);
}

async function show({ focus = false } = {}) {
  for (const stop of state.leave.splice(0)) stop();
  main.dataset.loaded = "false";
  const page = current();
  drawNav(page);
  if (!state.me.user) {
    signInView();
  } else {
    main.dataset.page = page.hash;
    main.replaceChildren(h("p", { class: "dim" }, "Loading…"));
    document.title = `${page.label} · Console · GPT Terminal`;
    const ctx = { me: state.me, main, onLeave: (fn) => state.leave.push(fn), params: hashParams(), refresh: () => show() };
    try {
      await page.render(ctx);
    } catch (err) {
      main.replaceChildren(h("h1", {}, page.label), failure(err));
    }
  }
  main.dataset.loaded = "true";
  if (focus) main.focus({ preventScroll: false });
}

function signInView() {
  main.dataset.page = "sign-in";
  document.title = "Sign in · Console · GPT Terminal";
  if (state.me.auth !== "users") {
    main.replaceChildren(h("h1", {}, "Console"),
      h("p", {}, "The console is for a server with accounts (AUTH=users). This one has none: ",
        state.me.auth === "token" ? "it asks for a proxy token." : "it asks nobody to sign in."),
      h("p", {}, "Spend is in the terminal: ", h("a", { href: "/" }, "gpt usage"), "."));
    return;
  }
  const status = h("p", { class: "status", role: "status" });
  const username = h("input", { id: "sign-in-user", name: "username", autocomplete: "username", required: true, maxlength: "200" });
  const password = h("input", { id: "sign-in-password", name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "form sign-in", "aria-labelledby": "sign-in-title" },
    h("label", { class: "field", for: "sign-in-user" }, h("span", { class: "field-label" }, "Username"), username),
    h("label", { class: "field", for: "sign-in-password" }, h("span", { class: "field-label" }, "Password"), password),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Sign in")), status);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    say(status, "signing in…");
    try {
      await signIn(username.value.trim(), password.value);
      password.value = "";
      await start();
    } catch (err) {
      say(status, err.message, "error");
      password.select();
    }
  });
  main.replaceChildren(h("h1", { id: "sign-in-title" }, "Sign in to the console"), form,
    h("p", { class: "dim" }, "No account yet? Make one in the terminal: ", h("a", { href: "/" }, "user register -u <name>"), "."));
  username.focus();
}

function showWho() {
  const user = state.me && state.me.user;
  who.textContent = user ? `${user.username}${user.admin ? " (admin)" : ""}` : "";
  signOutButton.hidden = !user;
}

signOutButton.addEventListener("click", async () => {
  try {
    await signOut();
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401) throw err;
  }
  await start();
});

async function start() {
  try {
    state.me = await me();
  } catch (err) {
    main.replaceChildren(h("h1", {}, "Console"), failure(err));
    document.documentElement.dataset.ready = "true";
    return;
  }
  showWho();
  await show();
  document.documentElement.dataset.ready = "true";
}

window.addEventListener("hashchange", () => {
  if (state.me) show({ focus: true });
});

start();
