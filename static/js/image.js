// One `gpt image` request: a progress line while the images are made, then the images in the
// page, or why there are none. Ctrl+C aborts the request (the server closes its upstream).
// Only `data:` images are shown (the page's CSP allows nothing else from elsewhere); the
// server sends nothing else, and anything else that came would be named, not loaded.

import { explain, tokenFor } from "./account.js";
import { getImages } from "./api.js";

const SHOWN = /^data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/]+={0,2}$/;

function element(tag, className, text = null) {
  const el = document.createElement(tag);
  el.className = className;
  if (text !== null) el.textContent = text;
  return el;
}

/** Whether the page shows an image from this URL. */
export function shownImage(url) {
  return typeof url === "string" && SHOWN.test(url);
}

export async function runImage(app, { prompt, number, size }) {
  const { term } = app;
  const block = term.block("image-result");
  block.setAttribute("aria-busy", "true");
  const many = number === 1 ? "an image" : `${number} images`;
  const waiting = element("div", "waiting", `making ${many} of ${size}`);
  waiting.setAttribute("role", "status");
  block.append(waiting);
  const controller = new AbortController();
  term.busy(() => controller.abort());
  const started = performance.now();
  let urls = null;
  let failure = null;
  let stopped = false;
  try {
    urls = await getImages({ prompt, number, size, token: tokenFor(app), signal: controller.signal });
  } catch (err) {
    if (err && err.name === "AbortError") stopped = true;
    else failure = err;
  } finally {
    waiting.remove();
    block.removeAttribute("aria-busy");
    term.idle();
  }
  if (stopped) {
    block.append(element("div", "note", "^C stopped: no image was made"));
  } else if (failure) {
    block.remove();
    term.error(failure.message || String(failure), explain(failure, app));
  } else {
    const grid = element("div", "image-grid");
    let refused = 0;
    urls.forEach((url, i) => {
      if (!shownImage(url)) {
        refused += 1;
        return;
      }
      const img = element("img", "generated");
      img.alt = `${prompt} (image ${i + 1} of ${urls.length})`;
      img.title = prompt;
      img.addEventListener("load", () => term.grew(), { once: true });
      img.src = url;
      grid.append(img);
    });
    block.append(grid);
    const seconds = ((performance.now() - started) / 1000).toFixed(1);
    const made = grid.childElementCount;
    block.append(element("div", "reply-meta", [made === 1 ? "1 image" : `${made} images`, size, `${seconds} s`].join(" · ")));
    if (refused) block.append(element("div", "note", `${refused} image${refused === 1 ? "" : "s"} not shown: the server sent an address this page does not load`));
  }
  term.grew();
}
