// Which role a name means: one of the server's (GET /api/roles) or one of the user's own
// (`gpt diy`, kept in this browser). Own roles never take a server role's name when they are
// made; should the server gain one later, the server's role wins and the own role is shown as
// hidden, so an own role exported and installed on the server simply becomes the server's.

import { UsageError } from "./args.js";
import { getRoles } from "./api.js";
import { ownRoles } from "./store.js";

export const ROLE_NAME = /^[a-z0-9][a-z0-9_-]{0,63}$/;
export const DEFAULT_ROLE = "default";

export function checkRole(name) {
  if (!ROLE_NAME.test(name)) {
    throw new UsageError(`"${name}" is not a role name (lowercase letters, digits, - and _)`, "list the roles with: gpt role");
  }
  return name;
}

/** Ask the server for its roles again (they may have changed since the page loaded). */
export async function loadRoles(app) {
  const roles = await getRoles({ token: app.settings.token });
  app.roles = Array.isArray(roles) ? roles : [];
  return app.roles;
}

/** The server's role names, `default` always among them. */
export function serverRoleNames(app) {
  const names = app.roles.map((r) => r.name);
  if (!names.includes(DEFAULT_ROLE)) names.unshift(DEFAULT_ROLE);
  return names;
}

/** Every name `-r` accepts: the server's roles, then the user's own that they do not hide. */
export function roleNames(app) {
  const names = serverRoleNames(app);
  for (const role of ownRoles.list()) if (!names.includes(role.keyword)) names.push(role.keyword);
  return names;
}

/**
 * What a role name means: {name, own (the own role, or null for a server role), key (its
 * conversation's storage key: own roles keep theirs apart from any server role's)}.
 */
export function resolveRole(app, name) {
  const own = serverRoleNames(app).includes(name) ? null : ownRoles.get(name);
  return { name, own, key: own ? `own:${name}` : name };
}
