"""The import graph keeps the project's boundaries (read from the source, nothing is imported).

- ``fl_training`` knows nothing of encryption, the story or the UI;
- the server role (``fhe_model/server.py``, ``fhe_model/http_server.py``) cannot
  reach the client role, where private keys live;
- the visitor's story (``story``) and every logic module run without gradio.

Imports count wherever they are written (inside functions and ``TYPE_CHECKING``
blocks too), and transitively through the project's own modules.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fl_training", "fhe_model", "story", "ui")
LOGIC = ("fl_training", "fhe_model", "story")
SERVER_ROLE = ("fhe_model.server", "fhe_model.http_server")
CLIENT_ROLE = ("fhe_model.client", "fhe_model.connection", "fhe_model.http_client", "fhe_model.evaluation")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(path): path
    for package in PACKAGES
    for path in sorted((ROOT / package).glob("*.py"))
} | {"app": ROOT / "app.py"}


def _imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _project_module(name: str) -> str | None:
    """The project module ``name`` refers to (a module, or a name inside one), if any."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


@cache
def direct_imports(module: str) -> frozenset[str]:
    """Every dotted name ``module`` imports (project modules and third-party ones)."""
    return frozenset(_imported_names(MODULES[module]))


@cache
def reachable(module: str) -> frozenset[str]:
    """Project modules ``module`` imports, directly or through other project modules."""
    seen: set[str] = set()
    stack = [module]
    while stack:
        current = stack.pop()
        for name in direct_imports(current):
            target = _project_module(name)
            if target is not None and target != current and target not in seen:
                seen.add(target)
                stack.append(target)
    seen.discard(module)
    return frozenset(seen)


def _third_party_reached(module: str, top_level: str) -> list[str]:
    """Project modules in ``module``'s closure (itself included) that import ``top_level`` directly."""
    return sorted(
        m for m in reachable(module) | {module}
        if any(name == top_level or name.startswith(top_level + ".") for name in direct_imports(m))
    )


def _of(package: str) -> list[str]:
    return sorted(m for m in MODULES if m == package or m.startswith(package + "."))


def test_the_graph_was_read():
    assert {"fl_training.task", "fhe_model.server", "story.session", "ui.training_tab", "app"} <= set(MODULES)
    assert "fl_training.task" in reachable("story.training")


@pytest.mark.parametrize("module", _of("fl_training"))
def test_fl_training_knows_nothing_of_encryption_the_story_or_the_ui(module):
    outside = sorted(m for m in reachable(module) if not m.startswith("fl_training"))
    assert not outside, f"{module} reaches {outside}"


@pytest.mark.parametrize("module", SERVER_ROLE)
def test_the_server_role_cannot_reach_the_client_role(module):
    assert not (reachable(module) & set(CLIENT_ROLE)), f"{module} reaches {sorted(reachable(module))}"


@pytest.mark.parametrize("module", [m for package in LOGIC for m in _of(package)])
def test_logic_and_the_story_run_without_gradio_or_the_ui(module):
    assert not _third_party_reached(module, "gradio"), f"{module} reaches gradio"
    assert not any(m == "app" or m.startswith("ui") for m in reachable(module)), f"{module} reaches the UI"


def test_no_source_file_needs_a_table_of_contents():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 600}
    assert not long, f"split these by job: {long}"
