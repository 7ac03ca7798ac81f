// A small event-stream parser for fetch bodies (EventSource cannot POST).
// It follows the WHATWG rules: lines end in CRLF, LF or CR; a line starting with ":" is a
// comment; "field: value" loses one space after the colon; a blank line dispatches the event.
// Text is fed as it arrives, cut anywhere: a CR at the end of one piece waits for the next.
// Each event carries the last event id seen so far (the `id` field, kept from event to event
// as the rules say), which is where a resumable reply is picked up after a dropped connection.

const MAX_PENDING_CHARS = 4 * 1024 * 1024; // one unfinished line may not grow without bound

export class SSEParser {
  constructor() {
    this.pending = "";
    this.lastEventId = "";
    this.resetEvent();
  }

  resetEvent() {
    this.type = "";
    this.data = [];
  }

  /** Feed decoded text; returns the events completed by it, as {event, data, id}. */
  feed(text) {
    this.pending += text;
    const events = [];
    const lineEnd = /\r\n|\r|\n/g;
    let start = 0;
    let match;
    while ((match = lineEnd.exec(this.pending)) !== null) {
      if (match[0] === "\r" && match.index === this.pending.length - 1) break; // maybe CRLF
      this.line(this.pending.slice(start, match.index), events);
      start = match.index + match[0].length;
    }
    this.pending = this.pending.slice(start);
    if (this.pending.length > MAX_PENDING_CHARS) {
      throw new Error("the server sent an event line that is too long");
    }
    return events;
  }

  line(line, events) {
    if (line === "") {
      if (this.data.length) {
        events.push({ event: this.type || "message", data: this.data.join("\n"), id: this.lastEventId });
      }
      this.resetEvent();
      return;
    }
    if (line.startsWith(":")) return; // a comment: ": stream open", ": ping"
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    // "retry" means nothing to a fetch; unknown fields are ignored by the rules.
  }
}

/** Throws when `ms` pass before `promise` settles (0: never). */
function within(promise, ms) {
  if (!ms) return promise;
  let timer;
  const silent = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`nothing arrived for ${Math.round(ms / 1000)} s`)), ms);
  });
  return Promise.race([promise, silent]).finally(() => clearTimeout(timer));
}

/**
 * The events of a fetch response body, as they arrive. Cancels the body when left early.
 * `watch.idleMs`, when set (it may be set while reading), is how long the body may stay
 * silent before it counts as a broken connection: a server sends heartbeats meanwhile.
 */
export async function* readEvents(body, watch = {}) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SSEParser();
  let finished = false;
  try {
    for (;;) {
      const { value, done } = await within(reader.read(), watch.idleMs || 0);
      if (done) {
        finished = true;
        // An event not closed by a blank line is dropped, as the rules say.
        return;
      }
      yield* parser.feed(value);
    }
  } finally {
    if (!finished) reader.cancel().catch(() => {});
  }
}
