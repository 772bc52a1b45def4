"""import_once: heavy packages are imported one thread at a time, and a failed import is not reused.

The cold-start race this guards against (two threads importing Concrete for the first time at once,
one left with a half-initialised ``concrete.fhe``) could not be made to fail on demand with Concrete
itself: 3 threads behind a barrier with ``sys.setswitchinterval(1e-6)`` and a second thread starting
0 to 3 s after the first, in 12 fresh interpreters, all imported cleanly. These tests use packages
written to fail the way Concrete did, and run the real Concrete import from many threads at once.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from concurrency.imports import import_once

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def package_dir(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith(("slowpkg", "flakypkg"))]:
        del sys.modules[name]


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def test_a_package_imported_by_many_threads_at_once_runs_once_and_is_complete(package_dir):
    _write(package_dir, {
        "slowpkg/__init__.py": """
            import time
            from slowpkg import core
            time.sleep(0.2)
            READY = core.VALUE + 1
        """,
        "slowpkg/core.py": "VALUE = 41\n",
        "slowpkg_runs.txt": "",
    })
    (package_dir / "slowpkg" / "__init__.py").write_text(
        (package_dir / "slowpkg" / "__init__.py").read_text()
        + f"open({str(package_dir / 'slowpkg_runs.txt')!r}, 'a').write('x')\n"
    )
    start = threading.Barrier(6)
    seen: list[int] = []

    def worker() -> None:
        start.wait()
        (module,) = import_once("slowpkg")
        seen.append(module.READY)  # a half-initialised module would have no READY yet

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [42] * 6
    assert (package_dir / "slowpkg_runs.txt").read_text() == "x"


def test_a_failed_import_is_purged_logged_once_and_retried_afresh(package_dir, caplog):
    # Like concrete.fhe in the race: the package and a sibling module are fully imported when a
    # submodule fails, and Python keeps them in sys.modules in the state the failure left them in.
    flag = package_dir / "fail-next"
    flag.write_text("2")
    _write(package_dir, {
        "flakypkg/__init__.py": "READY = True\n",
        "flakypkg/extensions.py": "import flakypkg\nflakypkg.half_done = True\n",
        "flakypkg/tracing.py": f"""
            from pathlib import Path
            from flakypkg import extensions
            flag = Path({str(flag)!r})
            left = int(flag.read_text())
            if left:
                flag.write_text(str(left - 1))
                raise ModuleNotFoundError("No module named 'flakypkg.extensions.array'")
            Tracer = object
        """,
    })
    caplog.set_level(logging.ERROR, logger="concurrency.imports")
    for _ in range(2):
        with pytest.raises(ModuleNotFoundError):
            import_once("flakypkg.tracing")
        assert not [m for m in sys.modules if m.startswith("flakypkg")], "a broken module was kept"
    (tracing,) = import_once("flakypkg.tracing")
    assert tracing.Tracer is object and sys.modules["flakypkg"].READY
    assert len([r for r in caplog.records if "flakypkg" in r.getMessage()]) == 1


@pytest.mark.slow
def test_concrete_first_used_by_many_threads_at_once_works_in_every_thread():
    # A fresh interpreter, so that this thread mix is the first to import Concrete: the launch's
    # compile, a visitor's compile, keys and the server's loading all ask for it at once.
    script = textwrap.dedent("""
        import sys, threading
        sys.setswitchinterval(1e-5)
        from fhe_model.concrete_modules import concrete, module
        errors, start = [], threading.Barrier(6)
        def use(pick):
            start.wait()
            try:
                pick()
            except BaseException as exc:
                errors.append(repr(exc))
        picks = [
            lambda: concrete().fhe.tracing.Tracer,
            lambda: concrete().LogisticRegression,
            lambda: concrete().FHEModelClient,
            lambda: concrete().FHEModelServer,
            lambda: module("concrete.fhe.extensions.tag").tag_context,
            lambda: concrete().FHEModelDev,
        ]
        threads = [threading.Thread(target=use, args=(p,)) for p in picks]
        [t.start() for t in threads]; [t.join() for t in threads]
        print("errors:", errors)
        sys.exit(1 if errors else 0)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
