// One question and its streamed reply: a waiting indicator until the first token, reasoning
// dimmed and apart, the answer as sanitized markdown growing in place, then the outcome. A
// dropped connection shows "reconnecting..." while the reply is picked up where it stopped.
// The role's conversation is sent along (bounded) and the new turn is kept afterwards. A
// server role is named in the request, and so is an own role kept on the server under the
// signed-in user (the server puts its messages first); an own role kept in this browser sends
// its definition as `system` instead.

import { explain, tokenFor } from "./account.js";
import { chatStream } from "./api.js";
import { MarkdownView } from "./markdown.js";
import { boundedHistory, conversations } from "./store.js";

const FINISH_NOTES = {
  length: "the reply reached its length limit and was cut off",
  content_filter: "the model's content filter stopped the reply",
};

function element(tag, className, text = null) {
  const el = document.createElement(tag);
  el.className = className;
  if (text !== null) el.textContent = text;
  return el;
}

/** `role` is what `resolveRole` made of the name: {name, own, key}. */
export async function runChat(app, { message, role, temperature, model }) {
  const { term } = app;
  const block = term.block("reply");
  block.setAttribute("aria-busy", "true");
  const waiting = element("div", "waiting", "waiting for the reply");
  waiting.setAttribute("role", "status");
  const answer = element("div", "answer markdown");
  block.append(waiting, answer);
  const view = new MarkdownView(answer, { onRender: () => term.grew() });
  let reasoning = null;
  let reconnecting = null;

  const controller = new AbortController();
  term.busy(() => controller.abort());
  const started = performance.now();
  let content = "";
  let done = null;
  let failure = null;
  let stopped = false;
  try {
    const messages = boundedHistory(conversations.get(role.key), message);
    const inBrowser = role.own && !role.own.server;
    const parts = chatStream({
      messages,
      role: inBrowser ? undefined : role.name,
      system: inBrowser ? role.own.definition : undefined,
      temperature, model, token: tokenFor(app), signal: controller.signal,
    });
    for await (const part of parts) {
      if (part.type === "content") {
        waiting.remove();
        content += part.text;
        view.append(part.text);
      } else if (part.type === "reasoning") {
        waiting.remove();
        if (!reasoning) {
          reasoning = element("details", "reasoning");
          reasoning.open = true;
          reasoning.append(element("summary", "reasoning-label", "reasoning"), element("div", "reasoning-text"));
          block.insertBefore(reasoning, answer);
        }
        reasoning.lastChild.append(part.text);
        term.grew();
      } else if (part.type === "reconnecting") {
        if (!reconnecting) {
          reconnecting = element("div", "note reconnecting", "reconnecting...");
          reconnecting.setAttribute("role", "status");
          block.append(reconnecting);
          term.grew();
        }
      } else if (part.type === "resumed") {
        if (reconnecting) reconnecting.remove();
        reconnecting = null;
      } else if (part.type === "done") {
        done = part;
      }
    }
  } catch (err) {
    if (err && err.name === "AbortError") stopped = true;
    else failure = err;
  } finally {
    waiting.remove();
    if (reconnecting) reconnecting.remove();
    view.finish();
    block.removeAttribute("aria-busy");
    term.idle();
  }

  if (stopped) {
    block.append(element("div", "note", "^C stopped: the reply was cut off here"));
  } else if (failure) {
    term.error(failure.message || String(failure), explain(failure, app));
  } else if (done) {
    if (!content) answer.append(element("p", "dim", "(the model sent an empty reply)"));
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const tokens = done.usage && done.usage.completion_tokens;
    const facts = [role.own ? `${role.name} (own)` : role.name, done.model || model, tokens ? `${tokens} tokens` : "", `${seconds} s`].filter(Boolean);
    block.append(element("div", "reply-meta", facts.join(" · ")));
    if (FINISH_NOTES[done.finishReason]) block.append(element("div", "note", FINISH_NOTES[done.finishReason]));
  }
  // A finished or deliberately stopped turn is remembered; a failed one is not, so that
  // trying again does not send a broken answer along.
  if (!failure && content && (done || stopped)) {
    conversations.append(role.key, { role: "user", content: message }, { role: "assistant", content });
  }
  term.grew();
}
