// An own role written as a server role file (roles/<keyword>.md): front matter, then one
// `# SYSTEM` section holding the definition. It follows the rules of the server's parser
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

/** The definition as a `# SYSTEM` section's lines, and notes on what had to change. */
function systemSection(definition) {
  const lines = [];
  const notes = [];
  let fence = "";
  let fenceLine = 0;
  definition.split("\n").forEach((line, index) => {
    const opened = fence ? null : opensFence(line);
    if (fence) {
      if (closesFence(line, fence)) fence = "";
    } else if (opened) {
      fence = opened;
      fenceLine = index + 1;
    } else if (HEADING.test(line)) {
      notes.push(`line ${index + 1} of the definition, "${line.trim()}", is written as "#${line}": a role file keeps level-1 headings for its sections`);
      line = `#${line}`;
    }
    lines.push(line.split("$").join("$$"));
  });
  if (fence) {
    notes.push(`the code fence opened on line ${fenceLine} of the definition is closed at its end: a role file may not leave one open`);
    lines.push(fence);
  }
  return { lines, notes };
}

/** {text: the role file, notes: [what differs from the definition as typed]}. */
export function roleFile(role) {
  const { lines, notes } = systemSection(role.definition);
  const text = [
    "---",
    `name: ${frontMatterValue(role.name)}`,
    `description: ${frontMatterValue(role.description)}`,
    "---",
    "",
    "# SYSTEM",
    "",
    ...lines,
    "",
  ].join("\n");
  return { text, notes };
}
