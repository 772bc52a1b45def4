"""Fail unless every test of the given files ran and passed, and no test failed, per pytest's JUnit report.

Usage: python .ci/require_passed.py REPORT.xml tests/test_x.py [...]

A required test that was skipped, deselected or never collected counts as not
run: CI must not go green without it. Any failed or errored test in the report
fails too, whatever exit status the test command ended with (a library's exit
handler can replace pytest's). Standard library only.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path


def outcomes(report: Path, test_file: str) -> dict[str, str]:
    """``{test name: "passed" | "skipped" | "failed"}`` for the tests of ``test_file`` in ``report``."""
    module = test_file.removesuffix(".py").replace("/", ".")
    found = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        if case.get("classname", "") == module or case.get("classname", "").startswith(module + "."):
            tags = {child.tag for child in case}
            found[case.get("name", "?")] = (
                "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
            )
    return found


def failures(report: Path) -> list[str]:
    """``module::name`` of every failed or errored test in ``report``."""
    return [
        f"{case.get('classname', '?')}::{case.get('name', '?')}"
        for case in ElementTree.parse(report).getroot().iter("testcase")
        if {child.tag for child in case} & {"failure", "error"}
    ]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    report, files = Path(argv[0]), argv[1:]
    if not report.is_file():
        print(f"CI: no pytest report at {report}: the tests did not run.", file=sys.stderr)
        return 1
    problems = []
    for test_file in files:
        found = outcomes(report, test_file)
        if not found:
            problems.append(f"{test_file}: no test ran (deselected, not collected or skipped at import)")
        problems += [f"{test_file}::{name} {result}" for name, result in found.items() if result != "passed"]
    problems += [f"{name} failed" for name in failures(report) if not any(name in p for p in problems)]
    if problems:
        print("CI: required tests did not pass:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"CI: required tests passed: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
