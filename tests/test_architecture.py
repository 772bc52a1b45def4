"""The import graph keeps the project's boundaries (read from the source, nothing is imported).

- ``fl_training`` knows nothing of encryption, the story or the UI;
- the server role (``fhe_model/server.py``, ``fhe_model/http_server.py``) cannot
  reach the client role, where private keys live;
- the visitor's story (``story``) and every logic module run without gradio;
- ``ui`` and ``app.py`` reach training and FHE only through ``story``;
- no module imports itself back through others (no cycles);
- only ``fhe_model/concrete_modules.py`` imports Concrete (one lock for its first import);
- ``flwr run .``, the command line and ``TrainingConfig`` train with the same defaults.

Imports count wherever they are written (inside functions and ``TYPE_CHECKING``
blocks too), and transitively through the project's own modules.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("concurrency", "fl_training", "fhe_model", "story", "ui")
LOGIC = ("concurrency", "fl_training", "fhe_model", "story")
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
            full = [f"{node.module}.{alias.name}" for alias in node.names]
            names.update(full)
            # ``from story import errors`` imports the module story.errors, not a name of story/__init__.
            if not all(name in MODULES for name in full):
                names.add(node.module)
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
    outside = sorted(m for m in reachable(module) if not m.startswith(("fl_training", "concurrency")))
    assert not outside, f"{module} reaches {outside}"


@pytest.mark.parametrize("module", _of("concurrency"))
def test_concurrency_helpers_know_nothing_of_the_demo(module):
    assert not [m for m in reachable(module) if not m.startswith("concurrency")]


@pytest.mark.parametrize("module", _of("ui") + ["app"])
def test_the_views_reach_training_and_fhe_only_through_the_story(module):
    below = sorted(
        name for name in direct_imports(module)
        if (target := _project_module(name)) is not None and target.startswith(("fl_training", "fhe_model"))
    )
    assert not below, f"{module} imports {below}: go through story/"


def _cycle_through(module: str) -> list[str] | None:
    """A shortest import path from ``module`` back to itself, if there is one."""
    paths = {module: [module]}
    queue = [module]
    while queue:
        current = queue.pop(0)
        for name in sorted(direct_imports(current)):
            target = _project_module(name)
            if target is None or target == current:
                continue
            if target == module:
                return paths[current] + [module]
            if target not in paths:
                paths[target] = paths[current] + [target]
                queue.append(target)
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_cycles(module):
    cycle = _cycle_through(module)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "fhe_model.concrete_modules"))
def test_only_one_module_imports_concrete(module):
    # TYPE_CHECKING imports run nothing; every other import of Concrete must take the one lock.
    tree = ast.parse(MODULES[module].read_text())
    type_only = {
        id(inner) for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
        for inner in ast.walk(node)
    }
    direct = [
        ast.unparse(node) for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in type_only
        and any(n == "concrete" or n.startswith("concrete.") for n in _names_of(node))
    ]
    assert not direct, f"{module}: {direct}; use fhe_model.concrete_modules.concrete()"


def _names_of(node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    return [node.module or ""]


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


def _cli_defaults() -> dict:
    from fl_training.__main__ import build_parser

    args = vars(build_parser().parse_args([]))
    names = {"clients": "num_clients", "rounds": "num_rounds", "partition": "partitioning",
             "dp": "differential_privacy"}
    return {names.get(k, k): v for k, v in args.items()}


def _run_config_defaults() -> dict:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    values = {k.replace("-", "_"): v for k, v in config.items()}
    values["num_rounds"] = values.pop("num_server_rounds")
    return values


def test_flwr_run_the_cli_and_training_config_share_every_default():
    from fl_training.config import PRESETS, TrainingConfig

    defaults = TrainingConfig().to_dict()
    assert PRESETS["default"] == TrainingConfig()
    run_config, cli = _run_config_defaults(), _cli_defaults()
    # num-clients = 0 in the run config means "one client per connected SuperNode" (a deployment's
    # own setting); node-wait-seconds, round-timeout and output are the ServerApp's, not training's.
    for name, value in defaults.items():
        if name != "num_clients":
            got = run_config.get(name)
            assert got == value, f"pyproject's run config: {name} = {got!r}, not {value!r}"
        assert cli.get(name) == value, f"the command line's {name} = {cli.get(name)!r}, not {value!r}"
    assert run_config["num_clients"] == 0


#: Longest function body (docstring excluded): a function longer than a screen or two does several jobs.
MAX_FUNCTION_LINES = 90


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_function_does_one_job(module):
    long = []
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0]
            has_docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            start = first.end_lineno if has_docstring else node.lineno
            if node.end_lineno - start > MAX_FUNCTION_LINES:
                long.append(f"{node.name} ({node.end_lineno - start} lines)")
    assert not long, f"{module}: split {long}"
