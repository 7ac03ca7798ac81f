// Model output is untrusted: markdown -> HTML by marked (raw HTML escaped to text), then
// DOMPurify, then a few rules of our own (links open apart, remote images become links).
// A MarkdownView renders a growing reply at most once per frame and only replaces the blocks
// that changed, so it never flickers.

import { Marked } from "/static/vendor/marked/marked.esm.js";
import DOMPurify from "/static/vendor/dompurify/purify.es.mjs";

const marked = new Marked({ gfm: true, breaks: true, async: false });

// Raw HTML in a reply is shown as the text it is, not rendered: a model writing about HTML
// means the tags, and markup that is never parsed can carry no handlers at all.
const ESCAPES = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
const escapeHtml = (text) => text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
marked.use({
  renderer: {
    html({ text, block }) {
      return block ? `<p>${escapeHtml(text.trim())}</p>\n` : escapeHtml(text);
    },
  },
});

const PURIFY = {
  RETURN_DOM_FRAGMENT: true,
  USE_PROFILES: { html: true }, // no SVG or MathML from a model
  FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "option", "dialog", "template"],
  FORBID_ATTR: ["style", "id", "tabindex", "autofocus"],
};

// The one class model output may carry is a code block's language (for highlighting), so a
// reply cannot dress itself up as the terminal's own messages.
DOMPurify.addHook("uponSanitizeAttribute", (node, data) => {
  if (data.attrName === "class") {
    data.keepAttr = node.nodeName === "CODE" && /^language-[\w+#-]{1,40}$/.test(data.attrValue);
  }
});

/** Untrusted markdown -> a safe DocumentFragment. */
export function renderMarkdown(text) {
  const fragment = DOMPurify.sanitize(marked.parse(text), PURIFY);
  for (const link of fragment.querySelectorAll("a[href]")) {
    link.target = "_blank";
    link.rel = "noopener noreferrer nofollow";
  }
  for (const img of fragment.querySelectorAll("img")) {
    const src = img.getAttribute("src") || "";
    if (src.startsWith("data:image/") && !src.startsWith("data:image/svg")) continue;
    // A remote or relative image would fetch (and could track); show its address instead.
    const label = `[image${img.alt ? `: ${img.alt}` : ""}]`;
    let replacement;
    if (/^https?:\/\//i.test(src)) {
      replacement = document.createElement("a");
      replacement.href = src;
      replacement.target = "_blank";
      replacement.rel = "noopener noreferrer nofollow";
    } else {
      replacement = document.createElement("span");
    }
    replacement.className = "image-placeholder";
    replacement.textContent = label;
    img.replaceWith(replacement);
  }
  return fragment;
}

/** Colour the code blocks that name a language; the highlighter loads on first use. */
export function highlightCode(root) {
  const blocks = Array.from(root.querySelectorAll("pre > code[class*='language-']"));
  if (!blocks.length) return Promise.resolve();
  return import("./highlight.js").then(({ highlight }) => blocks.forEach(highlight));
}

/** Replace `target`'s children by `fragment`'s, keeping the leading ones that did not change. */
function patch(target, fragment) {
  const next = Array.from(fragment.childNodes);
  const old = Array.from(target.childNodes);
  let same = 0;
  while (same < next.length && same < old.length && old[same].isEqualNode(next[same])) same++;
  for (let i = old.length - 1; i >= same; i--) old[i].remove();
  for (let i = same; i < next.length; i++) target.appendChild(next[i]);
}

export class MarkdownView {
  constructor(element, { onRender = () => {} } = {}) {
    this.element = element;
    this.text = "";
    this.frame = 0;
    this.onRender = onRender;
  }

  append(text) {
    this.text += text;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  render() {
    if (this.frame) cancelAnimationFrame(this.frame);
    this.frame = 0;
    patch(this.element, renderMarkdown(this.text));
    this.onRender();
  }

  /** The reply is complete (or stopped): render what there is now and colour its code. */
  finish() {
    this.render();
    highlightCode(this.element).then(this.onRender, (err) => console.warn("highlighting failed", err));
  }
}
