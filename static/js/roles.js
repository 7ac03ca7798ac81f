// Which role a name means: one of the server's (GET /api/roles) or one of the user's own
// (`gpt diy`: kept in this browser, or on the server when signed in; see ownroles.js).
// A browser-kept own role never takes a server role's name when it is made; should the server
// gain one later, the server's role wins and the own role is shown as hidden, so an own role
// exported and installed on the server simply becomes the server's. A signed-in user's own
// role wins over a server role of its name, as the server itself decides (it applies the
// caller's own role first).
// Conversations are kept per role in this browser; a signed-in user's apart from anyone
// else's who uses the same browser.

import { UsageError } from "./args.js";
import { getRoles } from "./api.js";
import { tokenFor } from "./account.js";
import { ownRoleStore } from "./ownroles.js";

export const ROLE_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;
export const DEFAULT_ROLE = "default";

/** A role name as typed: the server's rule, or the keyword of one of the user's own roles
 * (a role made by the GPT Terminal page may have another shape, e.g. capitals). */
export function checkRole(name, app = null) {
  if (!ROLE_NAME.test(name) && !(app && ownRoleStore(app).get(name))) {
    throw new UsageError(`"${name}" is not a role name (lowercase letters, digits, - and _)`, "list the roles with: gpt role");
  }
  return name;
}

/** Ask the server for its roles again (they may have changed since the page loaded); signed
 * in, the user's own come with them. */
export async function loadRoles(app) {
  const roles = await getRoles({ token: tokenFor(app) });
  app.roles = Array.isArray(roles) ? roles : [];
  return app.roles;
}

/** The server's role names, `default` always among them. */
export function serverRoleNames(app) {
  const names = app.roles.filter((r) => !r.own).map((r) => r.name);
  if (!names.includes(DEFAULT_ROLE)) names.unshift(DEFAULT_ROLE);
  return names;
}

/** Every name `-r` accepts: the server's roles, then the user's own that they do not hide. */
export function roleNames(app) {
  const names = serverRoleNames(app);
  for (const role of ownRoleStore(app).list()) if (!names.includes(role.keyword)) names.push(role.keyword);
  return names;
}

/** Where a role's conversation is kept in this browser. */
export function conversationKey(app, name, own) {
  const key = own ? `own:${name}` : name;
  return app.user ? `user:${app.user.id}:${key}` : key;
}

/**
 * What a role name means: {name, own (the own role, or null for a server role), key (its
 * conversation's storage key: own roles keep theirs apart from any server role's)}.
 */
export function resolveRole(app, name) {
  const store = ownRoleStore(app);
  const own = store.server || !serverRoleNames(app).includes(name) ? store.get(name) : null;
  return { name, own, key: conversationKey(app, name, Boolean(own)) };
}
