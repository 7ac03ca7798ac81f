// An own role written as a server role file (roles/<keyword>.md): front matter, then a
// `# SYSTEM` section holding the definition, and the role's example turns (a role made by the
// GPT Terminal page may have some) as `# USER` / `# ASSISTANT` sections when they take turns as
// a role file's must (user first, ending with the assistant). It follows the rules of the server's parser
// (gpt_proxy/roles.py), so the file loads and gives the model the same system message:
// - `$` is written `$$`: the server substitutes ${OS} and ${DATE} in role files, while an own
//   role's definition is sent exactly as typed;
// - a value that begins and ends with the same quote is quoted once more (the parser strips one
//   pair);
// - a level-1 heading outside a code fence would start (or break) a section: it becomes a
//   level-2 heading, and a code fence left open is closed. These two change the text, so they
//   are reported as notes rather than done silently.

const HEADING = /^#(?:[ \t]+.*?)?[ \t]*$/s;
const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/s;

function frontMatterValue(value) {
  return value.length >= 2 && value[0] === value[value.length - 1] && `"'`.includes(value[0]) ? `"${value}"` : value;
}

function opensFence(line) {
  const match = FENCE.exec(line);
  if (!match || (match[1][0] === "`" && match[2].includes("`"))) return null; // inline code
  return match[1];
}

function closesFence(line, marker) {
  const match = FENCE.exec(line);
  return Boolean(match) && match[1][0] === marker[0] && match[1].length >= marker.length && !match[2].trim();
}

/** A section's text as lines, and notes on what had to change (`what`: "the definition"...). */
function section(text, what) {
  const lines = [];
  const notes = [];
  let fence = "";
  let fenceLine = 0;
  text.split("\n").forEach((line, index) => {
    const opened = fence ? null : opensFence(line);
    if (fence) {
      if (closesFence(line, fence)) fence = "";
    } else if (opened) {
      fence = opened;
      fenceLine = index + 1;
    } else if (HEADING.test(line)) {
      notes.push(`line ${index + 1} of ${what}, "${line.trim()}", is written as "#${line}": a role file keeps level-1 headings for its sections`);
      line = `#${line}`;
    }
    lines.push(line.split("$").join("$$"));
  });
  if (fence) {
    notes.push(`the code fence opened on line ${fenceLine} of ${what} is closed at its end: a role file may not leave one open`);
    lines.push(fence);
  }
  return { lines, notes };
}

/** Whether example turns can be role-file sections: user, assistant, user, ... assistant. */
function takeTurns(examples) {
  return examples.length % 2 === 0 && examples.every((m, i) => m.role === (i % 2 ? "assistant" : "user"));
}

/** {text: the role file, notes: [what differs from the role as typed]}. */
export function roleFile(role) {
  const notes = [];
  const sections = [];
  if (role.definition) sections.push(["SYSTEM", role.definition, "the definition"]);
  const examples = (role.examples || []).filter((m) => m.content.trim());
  if (takeTurns(examples)) {
    examples.forEach((m, i) => sections.push([m.role.toUpperCase(), m.content, `example ${Math.floor(i / 2) + 1} (${m.role})`]));
  } else if (examples.length) {
    notes.push(`the role's ${examples.length} example messages are left out: a role file's examples go user, assistant, user, ... and end with the assistant`);
  }
  const body = [];
  for (const [heading, text, what] of sections) {
    const written = section(text, what);
    notes.push(...written.notes);
    body.push(`# ${heading}`, "", ...written.lines, "");
  }
  const text = [
    "---",
    `name: ${frontMatterValue(role.name)}`,
    `description: ${frontMatterValue(role.description)}`,
    "---",
    "",
    ...body,
  ].join("\n");
  return { text, notes };
}
