// Where the user's own roles (`gpt diy`) are kept: in this browser's localStorage without an
// account (AUTH=open or token, or signed out), or on the server under the signed-in user (the
// GPT Terminal user protocol's role/* routes; GET /api/roles lists them after the server's,
// marked "own"). Both stores have one shape, so `gpt diy`, `gpt role`, `gpt chat -r` and Tab
// need not know which is in use:
// - list(), get(keyword): the roles as last read, at once (Tab and the lists need them so; the
//   server's are read again with its roles, by `loadRoles`);
// - load(keyword): one role whole, with its definition;
// - create(role), update(keyword, role), remove(keyword): a UsageError or ApiError on failure;
//   the caller reads the server's list again afterwards.
// A role is {keyword, name, description, definition, examples: [{role, content}], created?};
// a server role's entry in the lists also says `server: true` and has no definition until it
// is loaded. The page makes a role as one system message, its definition; a role made by the
// GPT Terminal page may also hold example turns, which an edit keeps as they are.

import { UsageError } from "./args.js";
import { postEnvelope } from "./api.js";
import { ownRoles } from "./store.js";

const FULL = "make room (gpt reset forgets a role's conversation, history -c the commands) and try again";

const browserRoles = {
  server: false,
  where: "kept in this browser",
  list: () => ownRoles.list(),
  get: (keyword) => ownRoles.get(keyword),
  async load(keyword) {
    return ownRoles.get(keyword);
  },
  async create(role) {
    if (!ownRoles.save(role)) throw new UsageError("could not keep the role: this browser's storage is full or switched off", FULL);
  },
  async update(keyword, role) {
    if (!ownRoles.save(role)) throw new UsageError("could not keep the change: this browser's storage is full or switched off", FULL);
  },
  async remove(keyword) {
    if (!ownRoles.remove(keyword)) {
      throw new UsageError("could not forget the role: this browser's storage refused the change", "reload the page and try again");
    }
  },
};

function elementList(role) {
  return [{ name: "system", content: role.definition },
    ...(role.examples || []).map((m) => ({ name: m.role, content: m.content }))];
}

function accountRoles(app) {
  const entries = () => app.roles.filter((r) => r && r.own === true && typeof r.name === "string").map((r) => ({
    keyword: r.name,
    name: typeof r.title === "string" && r.title ? r.title : r.name,
    description: typeof r.description === "string" ? r.description : "",
    server: true,
  }));
  return {
    server: true,
    where: "saved on the server under your account",
    list: entries,
    get: (keyword) => entries().find((r) => r.keyword === keyword) || null,
    async load(keyword) {
      const entry = entries().find((r) => r.keyword === keyword);
      if (!entry) return null;
      const elements = await postEnvelope("/api/role/getRoleElementsByKeyword", { keyword });
      const list = Array.isArray(elements) ? elements.filter((m) => m && typeof m.content === "string") : [];
      const system = list.length && list[0].role === "system" ? list[0].content : "";
      return { ...entry, definition: system, examples: list.slice(system ? 1 : 0) };
    },
    async create(role) {
      await postEnvelope("/api/role/create", {
        keyword: role.keyword, name: role.name, description: role.description, roleElementList: elementList(role),
      });
    },
    async update(keyword, role) {
      await postEnvelope("/api/role/update", {
        keyword, name: role.name, description: role.description, roleElementList: elementList(role),
      });
    },
    async remove(keyword) {
      await postEnvelope("/api/role/delete", { keyword });
    },
  };
}

/** The store of own roles in use: the account's when signed in, else this browser's. */
export function ownRoleStore(app) {
  return app.user ? accountRoles(app) : browserRoles;
}
