"""CI cannot go green without the browser test.

``.ci/run`` sets ``CI``, under which the browser test (``tests/ui/test_browser.py``,
the file ``.ci/run`` names) fails rather than skips when Chromium is missing,
and then checks pytest's report: a browser test that was skipped, deselected
or never collected fails the run. ``.ci/run`` itself is run here on a scratch
copy of the repository whose README names a small test command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT

#: The browser test that ``.ci/run`` requires, as ``.ci/run`` names it.
BROWSER_TEST = re.search(r'require_passed\.py "\$report" (\S+)', (ROOT / ".ci" / "run").read_text()).group(1)


def test_ci_requires_the_browser_test_where_it_is():
    assert (ROOT / BROWSER_TEST).is_file(), f".ci/run requires {BROWSER_TEST}, which does not exist"


def test_the_browser_test_fails_instead_of_skipping_under_ci(tmp_path):
    env = {**os.environ, "CHROMIUM_PATH": str(tmp_path / "no-chromium")}
    env.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", BROWSER_TEST]
    required = subprocess.run(command, cwd=ROOT, env={**env, "CI": "true"}, capture_output=True, text=True,
                              timeout=300)
    assert required.returncode != 0, required.stdout
    assert "CI requires the browser test" in required.stdout
    optional = subprocess.run(command, cwd=ROOT, env={k: v for k, v in env.items() if k != "CI"},
                              capture_output=True, text=True, timeout=300)
    assert optional.returncode == 0 and " skipped" in optional.stdout and "passed" not in optional.stdout, \
        optional.stdout


BROWSER_TESTS = {
    "passes": "def test_browser():\n    pass\n",
    "skips": "import pytest\n\n\ndef test_browser():\n    pytest.skip('no browser here')\n",
    "is deselected": "import pytest\n\n\n@pytest.mark.browser\ndef test_browser():\n    pass\n",
    "is missing": None,
    # Passes, but another test fails and the run's exit status says success anyway.
    "passes beside a failure hidden from the exit status": "def test_browser():\n    pass\n",
}


@pytest.mark.parametrize("browser_test", list(BROWSER_TESTS))
def test_ci_run_fails_unless_the_browser_test_ran_and_passed(tmp_path, browser_test):
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / ".ci", repo / ".ci")
    (repo / ".venv").symlink_to(ROOT / ".venv")
    tests = repo / "tests"
    browser = repo / BROWSER_TEST
    browser.parent.mkdir(parents=True)
    package = browser.parent
    while package != repo:
        (package / "__init__.py").write_text("")
        package = package.parent
    (tests / "test_unit.py").write_text("def test_unit():\n    pass\n")
    if browser_test.startswith("passes beside"):
        (tests / "test_other.py").write_text("def test_other():\n    assert False\n")
        (tests / "conftest.py").write_text(
            "def pytest_sessionfinish(session, exitstatus):\n    session.exitstatus = 0\n")
    if BROWSER_TESTS[browser_test] is not None:
        browser.write_text(BROWSER_TESTS[browser_test])
    deselect = ' -m "not browser"' if browser_test == "is deselected" else ""
    (repo / "README.md").write_text(
        "# scratch\n\n<!-- test-command -->\n```bash\n"
        f".venv/bin/python -m pytest -q -p no:cacheprovider{deselect}\n```\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    (tmp_path / "bin").mkdir()
    fake_chromium = tmp_path / "bin" / "chromium"  # .ci/run installs Chromium only when it is missing
    fake_chromium.write_text("#!/bin/sh\nexit 0\n")
    fake_chromium.chmod(0o755)
    run = subprocess.run(["bash", str(repo / ".ci" / "run")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    if browser_test == "passes":
        assert run.returncode == 0, run.stderr
        assert f"required tests passed: {BROWSER_TEST}" in run.stdout
    elif browser_test.startswith("passes beside"):
        assert run.returncode != 0, "CI went green although a test failed"
        assert "tests.test_other::test_other failed" in run.stderr
    else:
        assert run.returncode != 0, f"CI went green although the browser test {browser_test}"
        assert "required tests did not pass" in run.stderr
