"""No silent skip (tests/skip_report.py), run as pytest runs it: a run that skipped tests says
so loudly at its end, how many and why; in CI (`CI=true` or `CI=1`, nothing else) a missing
service fails its test, and any skip fails the run."""

from __future__ import annotations

import os

import pytest

from .conftest import ROOT

pytest_plugins = ["pytester"]

TESTS = '''
import pytest
from tests.skip_report import missing

def test_needs_a_frobnicator():
    missing("no frobnicator is installed (apt-get install frobnicator)")

def test_skips_by_hand():
    pytest.skip("skipped by hand")

def test_runs():
    assert True
'''
HOOKS = ("from tests.skip_report import (pytest_runtest_logreport, pytest_sessionfinish, "
         "pytest_terminal_summary)\n")


@pytest.fixture()
def run(pytester, monkeypatch):
    """`run(ci)`: the three tests above in a pytest of their own, CI set to `ci` (None:
    unset); its result."""
    pytester.makeconftest(HOOKS)
    pytester.makepyfile(test_it=TESTS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [
        str(ROOT), os.environ.get("PYTHONPATH")])))

    def go(ci: str | None):
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        return pytester.runpytest_subprocess("-p", "no:cacheprovider")
    return go


@pytest.mark.parametrize("ci", [None, "false", "yes"])
def test_outside_ci_a_skip_passes_and_the_run_says_how_many_and_why(run, ci):
    result = run(ci)
    assert result.ret == 0
    result.assert_outcomes(passed=1, skipped=2)
    text = result.stdout.str()
    assert "2 TESTS SKIPPED: NOT RUN HERE" in text
    assert "1 x no frobnicator is installed (apt-get install frobnicator)" in text
    assert "1 x skipped by hand" in text
    assert "This run tested less than CI does" in text


@pytest.mark.parametrize("ci", ["true", "1"])
def test_in_ci_a_missing_service_fails_and_any_skip_fails_the_run(run, ci):
    result = run(ci)
    result.assert_outcomes(passed=1, failed=1, skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    text = result.stdout.str()
    assert "CI is set, so this fails instead of skipping" in text
    assert "a skipped test fails the run" in text


def test_in_ci_a_run_whose_only_fault_is_a_skip_fails(pytester, run):
    pytester.makepyfile(test_it='''
import pytest

def test_skips_by_hand():
    pytest.skip("skipped by hand")
''')
    result = run("true")
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
