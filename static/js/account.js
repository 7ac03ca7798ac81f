// Who is signed in, as the page knows it, and what the server asks of a caller. On load the page
// asks POST /api/user/current; signed out, it asks whether the server wants any credential
// (POST /api/session) and, if so and the page has no token to send, whether GET /api/limits
// answers without one (it does when the server has accounts, AUTH=users; with a proxy token,
// AUTH=token, it does not). So `app.auth` is "users", "token", "open", or "" when that is not
// known (the server could not be asked, or the page sends a token, as it always did, which
// serves either way: a proxy token, or an API key of the user's).
// Signed in, the session cookie is the credential: the page then sends no proxy token (a
// Bearer would be read as an API key instead of the session), and keeps own roles on the
// server. Without an account the page works as it always did.

import { ApiError, asksForCredentials, getJSON, postEnvelope } from "./api.js";

export const SIGN_IN = "user login -u <name>";
export const SIGN_IN_HINT = `sign in with ${SIGN_IN} (no account yet? user register -u <name>)`;

/** The proxy token to send: none while signed in (the session is the credential). */
export function tokenFor(app) {
  return app.user ? "" : app.settings.token;
}

/** Record who is signed in (null: nobody) and show it in the prompt. */
export function setUser(app, user) {
  app.user = user && typeof user === "object" && typeof user.username === "string" ? user : null;
  if (app.user) app.auth = "users";
  app.term.setUser(app.user ? app.user.username : "");
}

/** Ask the server who is signed in; resolves with the user or null. An ApiError other than
 * "not signed in" (the server unreachable, say) is thrown. */
export async function whoIsSignedIn(app) {
  try {
    setUser(app, await postEnvelope("/api/user/current"));
  } catch (err) {
    if (!(err instanceof ApiError) || err.status !== 401) throw err;
    setUser(app, null);
  }
  return app.user;
}

/** On load: who is signed in, and what the server asks of a caller (see the top). */
export async function loadAccount(app) {
  app.auth = "";
  if (await whoIsSignedIn(app)) return;
  if (!(await asksForCredentials())) {
    app.auth = "open";
    return;
  }
  if (app.settings.token) return;
  try {
    await getJSON("/api/limits"); // no token: answered only when the server has accounts
    app.auth = "users";
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) app.auth = "token";
    else throw err;
  }
}

/**
 * The hint for a refusal, by what the page knows of the server: a 401 while signed in means
 * the session ended (the page then shows nobody signed in); on a server with accounts it means
 * "sign in"; with a proxy token, "set the token".
 */
export function explain(err, app) {
  if (!(err instanceof ApiError) || err.status !== 401) return err.hint || "";
  if (app.user) {
    const name = app.user.username;
    setUser(app, null);
    return `your session has ended (signed out elsewhere, or the password changed): user login -u ${name}`;
  }
  if (app.auth === "users") return SIGN_IN_HINT;
  if (app.auth === "token") return "this server needs the proxy token: gpt token <token>";
  return err.hint || "";
}
