// Reads POST /api/chat-process the way the chatgpt-web and GPT Terminal frontends do, for the
// browser tests (our own code, written from how those frontends behave):
// - an XMLHttpRequest; on every progress event, everything received so far is cut after the
//   line end before the last character, that last line is parsed, and its `text` is shown
//   (a line not received whole yet fails to parse and is skipped until the next event);
// - when the request is done, their HTTP client parses a body that is exactly one JSON value
//   as an envelope, an error unless its `status` is "Success", and shows its message
//   (`Unauthorized` also makes them ask for the key again).

function start({prompt, options = {}, extra = {}, headers = {}}) {
  const xhr = new XMLHttpRequest();
  const run = {xhr, shown: [], last: null, progressEvents: 0};
  const summary = (outcome) => {
    let envelope = null;
    try {
      envelope = JSON.parse(xhr.responseText);
    } catch {
      // several lines: a reply, not an envelope
    }
    return {outcome, status: xhr.status, envelope, shown: run.shown, last: run.last,
            progressEvents: run.progressEvents};
  };
  run.done = new Promise((resolve) => {
    xhr.onprogress = () => {
      run.progressEvents += 1;
      const received = xhr.responseText;
      const cut = received.lastIndexOf('\n', received.length - 2);
      let data;
      try {
        data = JSON.parse(cut === -1 ? received : received.substring(cut));
      } catch {
        return;
      }
      run.last = data;
      if (run.shown[run.shown.length - 1] !== data.text) {
        run.shown.push(data.text);
        document.getElementById('shown').textContent = data.text;
      }
    };
    xhr.onload = () => {
      const result = summary('load');
      if (result.envelope && result.envelope.status !== 'Success') {
        document.getElementById('error').textContent =
          `${result.envelope.status}: ${result.envelope.message}`;
      }
      resolve(result);
    };
    xhr.onerror = () => resolve(summary('error'));
    xhr.onabort = () => resolve(summary('abort'));
  });
  xhr.open('POST', '/api/chat-process');
  xhr.setRequestHeader('Content-Type', 'application/json');
  for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
  xhr.send(JSON.stringify({prompt, options, ...extra}));
  window.current = run;
  return run;
}

// The whole exchange: resolves with what was shown and how the request ended.
window.chat = (args) => start(args).done;
// Start one and return at once; `window.current` follows it (for Stop).
window.startChat = (args) => {
  start(args);
};
document.documentElement.dataset.ready = 'true';
