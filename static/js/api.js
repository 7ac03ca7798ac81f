// The service's HTTP API as the page uses it: roles, limits, health, a streamed chat reply,
// generated images, API keys (JSON routes), and the GPT Terminal user protocol (accounts and
// own roles: POST routes answering HTTP 200 with an envelope {code, data} or {code, message}).
// Every failure becomes an ApiError with a message and a hint a person can act on. Requests
// carry the page's own cookies (fetch's default, same-origin), so a signed-in session goes
// along with each.

import { readEvents } from "./sse.js";

export class ApiError extends Error {
  constructor(message, { status = 0, code = "", hint = "" } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.hint = hint;
  }
}

const HINTS = {
  400: "check the command's options: help gpt chat",
  401: "this server needs a proxy token (gpt token <token>) or an account (user login -u <name>)",
  404: "list the roles with: gpt role",
  413: "the conversation is too long to send: gpt reset forgets it",
  429: "too many requests: wait a little and try again",
  502: "the model's API failed or refused the server's key: try again, or tell the operator",
  503: "the server cannot reach the model's API right now: try again in a moment",
  504: "the model's API did not answer in time: try again",
};

const STATUS_WORDS = {
  400: "bad request", 401: "not authorised", 403: "forbidden", 404: "not found",
  413: "too large", 429: "too many requests", 500: "server error", 502: "upstream failed",
  503: "upstream unreachable", 504: "upstream timed out",
};

function hintFor(status, code) {
  if (code === "unknown_role") return HINTS[404];
  if (code === "session_required") return "keys are made from a signed-in page: user login -u <name>";
  if (code === "model_not_allowed") return "pick an allowed model: gpt model <name>";
  if (code === "system_too_long") return "this role's definition is longer than the server now accepts: gpt diy --show <keyword>, then make a shorter role";
  return HINTS[status] || "";
}

/** An ApiError for a response that is not 2xx, from its JSON error body when it has one. */
async function httpError(response) {
  const status = response.status;
  let code = "";
  let detail = "";
  try {
    const body = await response.json();
    if (body && body.error) {
      code = String(body.error.code || "");
      detail = String(body.error.message || "");
    }
  } catch {
    // not JSON (a proxy's HTML page, say): the status alone must do
  }
  const words = STATUS_WORDS[status] || response.statusText || "error";
  let message = `HTTP ${status} (${words})`;
  if (detail) message += `: ${detail}`;
  if (status === 429) {
    const after = response.headers.get("Retry-After");
    if (after && /^\d+$/.test(after)) message += ` (retry after ${after} s)`;
  }
  return new ApiError(message, { status, code, hint: hintFor(status, code) });
}

function networkError(err) {
  return new ApiError(`could not reach the server (${err.message || err})`, {
    hint: "check that the service is running and the network is up, then try again",
  });
}

function authHeaders(token) {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** A JSON route: `body` (an object) is sent as JSON; the answer's JSON, or an ApiError. */
export async function requestJSON(path, { method = "GET", body, token = "", signal } = {}) {
  const headers = { Accept: "application/json", ...authHeaders(token) };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method, headers, signal, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw networkError(err);
  }
  if (!response.ok) throw await httpError(response);
  return response.json();
}

export const getJSON = (path, options = {}) => requestJSON(path, { ...options, method: "GET" });

export const getRoles = (options) => getJSON("/api/roles", options);
export const getHealth = (options) => getJSON("/healthz", options);

/** The user's own API keys (a signed-in session only): list, make (the key is in the answer
 * once), revoke. */
export const listKeys = () => requestJSON("/api/keys");
export const createKey = (body) => requestJSON("/api/keys", { method: "POST", body });
export const revokeKey = (id) => requestJSON(`/api/keys/${encodeURIComponent(id)}`, { method: "DELETE" });

/** What the caller spent and may spend (GET /api/usage): budgets and spend by day. */
export const getUsage = (days, options = {}) => getJSON(`/api/usage?days=${encodeURIComponent(days)}`, options);

/** Whether the server asks for any credential (a proxy token or an account): the `auth` of
 * POST /api/session, which the chat-process frontends ask the same. */
export async function asksForCredentials() {
  const answer = await requestJSON("/api/session", { method: "POST" });
  return Boolean(answer && answer.data && answer.data.auth);
}

// The envelope's codes, as the HTTP statuses they stand for.
const ENVELOPE_STATUS = { 40000: 400, 40100: 401, 40300: 403, 40400: 404, 50000: 500 };

/**
 * POST to a route of the GPT Terminal user protocol (`/api/user/...`, `/api/role/...`,
 * `/api/gpt/getImage`): the envelope's `data`
 * on success; on failure an ApiError with the envelope's message, `status` being the HTTP status
 * its code stands for (40100: 401, not signed in) and `code` the envelope's code. `body` null:
 * nothing is sent (the protocol's `user/current`, `user/logout`, `role/listByUserId`). `token`:
 * a proxy token or API key to send as well (the session cookie goes along in any case).
 */
export async function postEnvelope(path, body = null, { token = "", signal } = {}) {
  const headers = { Accept: "application/json", ...authHeaders(token) };
  if (body !== null) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method: "POST", headers, signal, cache: "no-store",
      body: body === null ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw networkError(err);
  }
  if (!response.ok) throw await httpError(response);
  let envelope;
  try {
    envelope = await response.json();
  } catch (err) {
    if (err.name === "AbortError") throw err;
    envelope = null;
  }
  if (!envelope || typeof envelope !== "object") {
    throw new ApiError("the server's answer is not JSON", {
      hint: "is something between the page and the service rewriting replies?",
    });
  }
  if (envelope.code === 0) return envelope.data;
  const code = Number(envelope.code);
  const message = String(envelope.message || envelope.msg || "unknown error");
  throw new ApiError(message, { status: ENVELOPE_STATUS[code] || 500, code: String(code || 50000) });
}

/** The server's limits; `max_system_chars` is the longest definition an own role may have. */
export async function getLimits(options) {
  const limits = await getJSON("/api/limits", options);
  const max = limits && limits.max_system_chars;
  if (!Number.isSafeInteger(max) || max < 1) {
    throw new ApiError("the server did not say how long a role's definition may be", {
      hint: "is the server older than this page? Reload the page, or tell the operator",
    });
  }
  return limits;
}

const RESUME_MIN_WAIT_MS = 250; // the first retry of a dropped reply; doubling, at most:
const RESUME_MAX_WAIT_MS = 2000;
const RESUME_AFTER_GRACE_MS = 30000; // a reply that ended meanwhile is still kept a while

function pause(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    if (signal) {
      signal.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(signal.reason || new DOMException("aborted", "AbortError"));
      }, { once: true });
    }
  });
}

function replyPath(id) {
  return `/api/replies/${encodeURIComponent(id)}`;
}

/** Tell the server to stop a resumable reply (Ctrl+C): its upstream is closed at once. */
export function cancelReply(id, token = "") {
  fetch(replyPath(id), { method: "DELETE", headers: authHeaders(token), keepalive: true })
    .catch(() => {}); // the page has stopped reading anyway; the server gives up after its grace period
}

/**
 * The rest of a resumable reply after a dropped connection: GET /api/replies/<id> after the
 * last event received, tried again (250 ms, then doubling to 2 s) while the server may still
 * hold the reply. An ApiError when it is gone or refused; an AbortError when `signal` aborts.
 */
async function resumeReply(reply, token, signal) {
  const deadline = performance.now() + reply.graceSeconds * 1000 + RESUME_AFTER_GRACE_MS;
  let wait = RESUME_MIN_WAIT_MS;
  let lastProblem = "";
  for (;;) {
    let response = null;
    try {
      response = await fetch(replyPath(reply.id), {
        headers: { Accept: "text/event-stream", "Last-Event-ID": String(reply.last), ...authHeaders(token) },
        signal,
        cache: "no-store",
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      lastProblem = err.message || String(err);
    }
    if (response && response.ok && response.body) return response;
    if (response && response.status < 500 && response.status !== 429) {
      const error = await httpError(response);
      throw new ApiError(`the connection dropped and the reply could not be resumed: ${error.message}`, {
        status: error.status, code: error.code, hint: "ask again; a follow-up keeps the conversation so far",
      });
    }
    if (response) lastProblem = `HTTP ${response.status}`;
    if (performance.now() + wait > deadline) {
      throw new ApiError(`the connection dropped and the server could not be reached again in time (${lastProblem})`, {
        hint: "check that the service is running and the network is up, then ask again",
      });
    }
    await pause(wait, signal);
    wait = Math.min(wait * 2, RESUME_MAX_WAIT_MS);
  }
}

/**
 * Ask for a reply as server-sent events and yield its parts as they come (`role`: a server
 * role, or none; `system`: a system message of the page's own, e.g. an own role's definition):
 * {type: "content" | "reasoning", text} ... then {type: "done", finishReason, usage, model}.
 * The reply is resumable: when the connection drops (or stays silent past the heartbeats),
 * {type: "reconnecting"} comes, the rest is asked for after the last event received, and
 * {type: "resumed"} comes once it flows again; nothing is lost or repeated.
 * Throws ApiError for an HTTP error, an `error` event, or a reply that cannot be resumed;
 * an AbortError when `signal` aborts (then the reply is cancelled on the server too).
 */
export async function* chatStream({ messages, role, system, temperature, model, token = "", signal }) {
  const body = { message: messages, stream: true };
  if (role) body.role = role;
  if (system) body.system = system;
  if (temperature !== undefined && temperature !== null) body.temperature = temperature;
  if (model) body.model = model;
  let response;
  try {
    response = await fetch("/api/gpt/get", {
      method: "POST",
      headers: {
        "Content-Type": "application/json", Accept: "text/event-stream", "X-Resumable": "1",
        ...authHeaders(token),
      },
      body: JSON.stringify(body),
      signal,
      cache: "no-store",
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw networkError(err);
  }
  if (!response.ok) throw await httpError(response);
  const type = response.headers.get("Content-Type") || "";
  if (!type.startsWith("text/event-stream") || !response.body) {
    throw new ApiError(`the server answered with ${type || "no content type"} instead of an event stream`, {
      hint: "is something between the page and the service rewriting replies?",
    });
  }
  // The reply's id (none: the server could not keep this reply, which then cannot resume).
  const reply = { id: response.headers.get("X-Reply-Id") || "", last: 0, graceSeconds: 30 };
  const watch = { idleMs: 0 };
  try {
    for (;;) {
      let broken = null;
      try {
        for await (const event of readEvents(response.body, watch)) {
          if (/^\d{1,12}$/.test(event.id)) reply.last = Number(event.id);
          let data;
          try {
            data = JSON.parse(event.data);
          } catch {
            throw new ApiError("the server sent an event that is not JSON");
          }
          if (event.event === "reply") {
            if (data && typeof data.reply_id === "string") reply.id = data.reply_id;
            if (data && data.grace_seconds >= 0) reply.graceSeconds = Number(data.grace_seconds);
            if (data && data.heartbeat_seconds > 0) watch.idleMs = (2 * data.heartbeat_seconds + 5) * 1000;
            continue;
          }
          if (event.event === "error") {
            const error = (data && data.error) || {};
            const status = Number(error.status) || 0;
            throw new ApiError(`the reply failed: ${error.message || "unknown error"}`, {
              status, code: String(error.code || ""), hint: hintFor(status, error.code),
            });
          }
          if (event.event === "done") {
            yield { type: "done", finishReason: data.finish_reason, usage: data.usage, model: data.model };
            return;
          }
          if (typeof data.content === "string") yield { type: "content", text: data.content };
          else if (typeof data.reasoning === "string") yield { type: "reasoning", text: data.reasoning };
        }
      } catch (err) {
        if (err.name === "AbortError" || err instanceof ApiError) throw err;
        if (signal && signal.aborted) throw signal.reason || err;
        broken = err;
      }
      if (!reply.id) {
        if (broken) {
          throw new ApiError(`the connection broke during the reply (${broken.message || broken})`, {
            hint: "try again; a follow-up keeps the conversation so far",
          });
        }
        throw new ApiError("the reply ended before it was finished (the connection closed early)", {
          hint: "try again",
        });
      }
      yield { type: "reconnecting" };
      response = await resumeReply(reply, token, signal);
      yield { type: "resumed" };
    }
  } catch (err) {
    if (reply.id && (err.name === "AbortError" || (signal && signal.aborted))) cancelReply(reply.id, token);
    throw err;
  }
}

const IMAGE_HINTS = {
  40000: "check the prompt and the options: help gpt image",
  40100: "this server needs a proxy token: gpt token <token>",
  40300: "this server does not let you make images",
  50000: "the image service failed: try again, or tell the operator",
};

/**
 * Ask for images (POST /api/gpt/getImage, the GPT Terminal user protocol): resolves with the
 * `data:` URLs of the images made; an ApiError for a failure (its envelope's message); an
 * AbortError when `signal` aborts (the connection closes, so the server stops too).
 */
export async function getImages({ prompt, number, size, token = "", signal }) {
  let data;
  try {
    data = await postEnvelope("/api/gpt/getImage", { prompt, number, size }, { token, signal });
  } catch (err) {
    if (err instanceof ApiError && err.code) {
      err.message = `no image was made: ${err.message}`;
      err.hint = IMAGE_HINTS[err.code] || "";
    }
    throw err;
  }
  if (!Array.isArray(data)) throw new ApiError("the server's answer holds no images");
  return data.map((item) => (item && typeof item.url === "string" ? item.url : ""));
}
