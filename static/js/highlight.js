// Code highlighting (highlight.js core and a few common languages), loaded on first use.

import hljs from "/static/vendor/highlight/core.min.js";
import bash from "/static/vendor/highlight/languages/bash.min.js";
import css from "/static/vendor/highlight/languages/css.min.js";
import diff from "/static/vendor/highlight/languages/diff.min.js";
import go from "/static/vendor/highlight/languages/go.min.js";
import javascript from "/static/vendor/highlight/languages/javascript.min.js";
import json from "/static/vendor/highlight/languages/json.min.js";
import powershell from "/static/vendor/highlight/languages/powershell.min.js";
import python from "/static/vendor/highlight/languages/python.min.js";
import rust from "/static/vendor/highlight/languages/rust.min.js";
import sql from "/static/vendor/highlight/languages/sql.min.js";
import typescript from "/static/vendor/highlight/languages/typescript.min.js";
import xml from "/static/vendor/highlight/languages/xml.min.js";
import yaml from "/static/vendor/highlight/languages/yaml.min.js";

const LANGUAGES = { bash, css, diff, go, javascript, json, powershell, python, rust, sql, typescript, xml, yaml };
for (const [name, grammar] of Object.entries(LANGUAGES)) hljs.registerLanguage(name, grammar);
hljs.registerAliases(["sh", "shell", "zsh", "console"], { languageName: "bash" });
hljs.configure({ ignoreUnescapedHTML: true });

/** Colour one <code> element if its language is known; hljs escapes what it writes. */
export function highlight(code) {
  if (code.classList.contains("hljs")) return;
  const match = /language-([\w+#-]+)/.exec(code.className);
  if (match && hljs.getLanguage(match[1])) hljs.highlightElement(code);
}
