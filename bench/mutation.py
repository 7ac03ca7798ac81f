"""The mutation run: `make mutation` (or `python -m bench.mutation [MODULE ...]`).

Proves that the guards of identity, accounts, budgets and replies matter: mutmut (pinned in
requirements-dev.txt) changes one operator, constant or return of a module at a time (a
"mutant") and runs the tests that call the changed function; a mutant no test notices
("survived") is a guard no test holds. Each module runs in a work folder of its own,
`.mutation/<module>/` (git-ignored), made afresh each run from the working tree (tracked and
untracked files, not ignored ones), with a pyproject.toml whose `[tool.mutmut]` is the
project's (the settings every module shares) plus the module's own part from `MODULES`
below: the one file to mutate and the test files that exercise it. mutmut copies that folder
into its own `mutants/` inside it, traces which tests call which function (a full run of the
module's test files), then runs, per mutant, only the tests that called its function, two at
a time, forked from one process.

Rules, and why:
- A module's test files only, and without the PostgreSQL half of parametrised tests and the
  tests that start gunicorn (`deselect`): mutmut traces calls in its own process, so a test
  whose work happens in a gunicorn would run for nothing, and a PostgreSQL server per mutant
  costs more than the tests. Dialect-only lines are therefore not judged here (the suite runs
  them on PostgreSQL).
- Bounded: mutmut's per-mutant CPU limit (pyproject.toml: (clean time + 2 s) x 10, twice),
  and a wall-clock budget per module (`--budget`, default 600 s): past it the run is stopped
  (its process group, started here) and the mutants not reached are reported as not checked.
- Results: the figures per module (mutants, killed, survived, timeouts, no tests, not
  checked) and each survivor with its diff, printed and written to
  bench/results/mutation-<module>.json (git-ignored). `cd .mutation/<module> && mutmut show
  <name>` shows one mutant afterwards.
- Continuing: `--keep` copies the working tree over the last run's folder and judges only the
  mutants not judged yet (a run stopped at its budget goes on where it stopped); `--again`
  judges the survivors again too (after tests were added). mutmut traces the new tests.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
RESULTS = ROOT / "bench" / "results"


@dataclass(frozen=True)
class Module:
    source: str  # the file mutated
    tests: tuple[str, ...]  # the test files that exercise it
    # pytest -k: tests left out (PostgreSQL halves, tests whose work runs in gunicorn)
    deselect: str = (
        "not postgresql and not gunicorn and not three_workers and not sharing_a_database")


MODULES: dict[str, Module] = {
    "identity": Module("gpt_proxy/identity/callers.py", (
        "tests/test_identity.py", "tests/test_identity_guards.py", "tests/test_login_throttle.py",
        "tests/test_accounts.py", "tests/test_bad_input.py", "tests/test_user_protocol.py",
        "tests/test_vary_origin.py")),
    "accounts": Module("gpt_proxy/identity/accounts.py", (
        "tests/test_accounts.py", "tests/test_accounts_guards.py", "tests/test_login_throttle.py",
        "tests/test_bad_input.py", "tests/test_identity.py", "tests/test_identity_guards.py",
        "tests/test_roles_api.py")),
    "security": Module("gpt_proxy/identity/security.py", (
        "tests/test_security.py", "tests/test_security_guards.py", "tests/test_vary_origin.py",
        "tests/test_identity.py")),
    "budgets": Module("gpt_proxy/money/budgets.py", (
        "tests/test_budgets.py", "tests/test_budgets_guards.py", "tests/test_budgets_doors.py")),
    "replies": Module("gpt_proxy/storage/replies.py", ("tests/test_replies.py",
                                                "tests/test_replies_guards.py"),
                      deselect="not gunicorn and not 1000_replies"),
}

# mutmut's exit codes per mutant (mutmut.stats.status_by_exit_code, summarised)
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests",
          34: "skipped", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout",
          255: "timeout", 37: "killed"}


def _files() -> list[str]:
    """The working tree's files, tracked or new, ignored ones left out."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                         cwd=ROOT, check=True, capture_output=True).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def _toml(value: object) -> str:
    return json.dumps(value)  # strings, numbers and lists of strings: JSON is valid TOML


def prepare(name: str, module: Module, fresh: bool = True) -> Path:
    """The work folder of `name`: the working tree (afresh, or copied over the last run's
    folder, whose results mutmut keeps), and a pyproject.toml that adds the module's part to
    the project's [tool.mutmut]."""
    folder = WORK / name
    if fresh:
        shutil.rmtree(folder, ignore_errors=True)
    files = _files()
    for relative in files:
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    text = (ROOT / "pyproject.toml").read_text()
    shared = tomllib.loads(text).get("tool", {}).get("mutmut", {})
    text = re.sub(r"(?ms)^\[tool\.mutmut\]\n.*?(?=^\[|\Z)", "", text)
    top = sorted({relative.split("/")[0] for relative in files} - {"gpt_proxy"})
    settings = dict(shared, only_mutate=[module.source],
                    pytest_add_cli_args=[*shared.get("pytest_add_cli_args", []),
                                         "-k", module.deselect],
                    pytest_add_cli_args_test_selection=list(module.tests),
                    also_copy=top)
    text += "\n[tool.mutmut]\n" + "".join(f"{key} = {_toml(value)}\n"
                                           for key, value in settings.items())
    (folder / "pyproject.toml").write_text(text)
    return folder


_DIFFS = """
import json, sys
from mutmut.mutation.diff_apply import get_diff_for_mutant
path, names = sys.argv[1], json.loads(sys.stdin.read())
print(json.dumps([get_diff_for_mutant(name, path=path) for name in names]))
"""


def diffs(folder: Path, source: str, names: list[str]) -> list[str]:
    """Each mutant's diff against the original function (mutmut show's, in one process)."""
    if not names:
        return []
    done = subprocess.run([sys.executable, "-c", _DIFFS, source], cwd=folder, check=True,
                          input=json.dumps(names), capture_output=True, text=True)
    return json.loads(done.stdout)


def _judged(folder: Path, module: Module) -> dict[str, int | None]:
    meta = folder / "mutants" / f"{module.source}.meta"
    return json.loads(meta.read_text())["exit_code_by_key"] if meta.exists() else {}


def run(name: str, module: Module, budget: float, children: int, keep: bool,
        again: bool, only: list[str]) -> dict:
    kept = (keep or again) and (WORK / name).exists()
    folder = prepare(name, module, fresh=not kept)
    mutmut = [sys.executable, "-m", "mutmut"]
    dotted = module.source.removesuffix(".py").replace("/", ".")
    targets = [f"{dotted}.*"]
    if kept:
        # named mutants are judged again, the others keep their result: the ones not yet
        # judged (a run stopped at its budget), and with --again the survivors too
        targets = [mutant for mutant, code in _judged(folder, module).items()
                   if code is None or (again and STATUS.get(code) != "killed")]
    if only:
        targets = [mutant for mutant in targets
                   if any(fnmatch.fnmatch(mutant, pattern) for pattern in only)]
    log = folder / "mutmut.log"
    started = time.monotonic()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    code, stopped = 0, False
    with log.open("w") as out:
        if not targets:
            out.write("nothing left to judge\n")
            process = None
        else:
            process = subprocess.Popen(
                [*mutmut, "run", "--max-children", str(children), *targets], cwd=folder,
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = process.wait(timeout=budget) if process else 0
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)  # mutmut's group, started above
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            code, stopped = None, True
    seconds = time.monotonic() - started
    codes = _judged(folder, module)
    counts: dict[str, int] = {}
    survivors = []
    for mutant, exit_code in sorted(codes.items()):
        status = STATUS.get(exit_code, "not checked" if exit_code is None else "suspicious")
        counts[status] = counts.get(status, 0) + 1
        if status in ("survived", "no tests", "timeout", "suspicious"):
            survivors.append({"mutant": mutant, "status": status})
    for survivor, diff in zip(survivors, diffs(folder, module.source,
                                               [s["mutant"] for s in survivors]), strict=True):
        survivor["diff"] = diff
    report = {"module": name, "source": module.source, "tests": list(module.tests),
              "deselect": module.deselect, "seconds": round(seconds), "mutmut_exit": code,
              "stopped_at_budget": stopped, "mutants": len(codes), "counts": counts,
              "survivors": survivors}
    if not codes:
        report["log_tail"] = log.read_text()[-3000:]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"mutation-{name}.json").write_text(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=[], metavar="MODULE",
                        help=f"of {', '.join(MODULES)} (default: all)")
    parser.add_argument("--budget", type=float, default=600.0,
                        help="wall-clock seconds per module before the run is stopped")
    parser.add_argument("--children", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the work folder and its results (the working tree copied "
                             "over it): judge only the mutants not judged yet")
    parser.add_argument("--again", action="store_true",
                        help="as --keep, and judge the survivors again (after adding tests)")
    parser.add_argument("--only", nargs="+", default=[], metavar="PATTERN",
                        help="with --keep/--again: only the mutants whose names match")
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff")
    args = parser.parse_args(argv)
    unknown = [name for name in args.modules if name not in MODULES]
    if unknown:
        parser.error(f"unknown module {unknown}; known: {', '.join(MODULES)}")
    failed = False
    rows = []
    for name in args.modules or list(MODULES):
        report = run(name, MODULES[name], args.budget, args.children, args.keep,
                     args.again, args.only)
        counts = report["counts"]
        rows.append((name, report["mutants"], counts.get("killed", 0),
                     counts.get("survived", 0), counts.get("timeout", 0),
                     counts.get("no tests", 0), counts.get("not checked", 0),
                     report["seconds"]))
        print(f"\n{name}: {report['mutants']} mutants {counts} in {report['seconds']} s"
              + (" (stopped at the budget)" if report["stopped_at_budget"] else ""))
        if "log_tail" in report:
            print(report["log_tail"])
            failed = True
        for survivor in report["survivors"]:
            print(f"  {survivor['status']}: {survivor['mutant']}")
            if args.diffs:
                print("    " + survivor["diff"].strip().replace("\n", "\n    "))
    print("\nmodule      mutants  killed  survived  timeout  no tests  not checked  seconds")
    for row in rows:
        print("{:<10} {:>8} {:>7} {:>9} {:>8} {:>9} {:>12} {:>8}".format(*row))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
