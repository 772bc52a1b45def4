"""Repeated use of one app process: ``python app.py`` run as a user would, driven over its API.

Ten small federated trainings (digits, 2 clients, 1 round) in ten sessions,
two sessions at a time, each then compiled and taken through the four
encrypted steps. Every session must get its own answer, the app's memory must
level off (compared on its floor, not on single samples), and
once the tabs are closed nothing of the sessions may remain in the app's
temporary directory (a private one here, so that it can be inspected whole).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.utils import Status

from fl_training.datasets import load_dataset
from story.registry import PREPARED_MESSAGE
from tests.helpers import ROOT, end_tab, free_port

SESSIONS = 10
PARALLEL = 2
TRAINING = {"dataset": "digits", "num_clients": 2, "num_rounds": 1, "local_epochs": 1}
#: RSS growth allowed over the last half of the runs, once allocator pools and caches are warm.
MAX_LATE_GROWTH_BYTES = 120 * 1024 * 1024
#: Runs whose RSS is compared: the lowest of a few, so that a transient peak at the moment
#: of a sample (a garbage collection not yet run, a buffer not yet freed) does not count.
SETTLE_RUNS = 3

#: Ten trainings, compilations and encrypted walks in one app process: about two minutes.
pytestmark = pytest.mark.slow


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@dataclass
class RunningApp:
    url: str
    process: subprocess.Popen
    tmp: Path
    log: Path
    held_by_the_app: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid


@pytest.fixture(scope="module")
def app_process():
    """``python app.py`` on a free loopback port, with a temporary directory of its own."""
    # Short, because Ray puts unix sockets under it (at most 107 bytes per path).
    tmp = Path(tempfile.mkdtemp(prefix="fhe-rep-"))
    port = free_port()
    log = tmp.parent / f"{tmp.name}.log"
    env = {
        **os.environ,
        "TMPDIR": str(tmp),
        "GRADIO_TEMP_DIR": str(tmp / "gradio"),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
    }
    env.pop("FHE_SERVER_URL", None)
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"app.py exited:\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(url, timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "app.py did not start within 180 s"
            time.sleep(0.5)
        # What the app prepares at launch (the defaults' training, circuit and deployment) is the
        # app's, not a session's, and stays until shutdown: wait for it, then note what it holds.
        while PREPARED_MESSAGE not in (text := log.read_text(errors="replace")):
            assert "could not prepare" not in text, text[-3000:]
            assert time.monotonic() < deadline, "the app did not prepare its defaults within 180 s"
            time.sleep(0.5)
        yield RunningApp(url, process, tmp, log, held_by_the_app=_leftovers(tmp))
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        log.unlink(missing_ok=True)


@dataclass
class Run:
    """One session's walk, as seen by its client."""

    index: int
    statuses: list = field(default_factory=list)
    started: float | None = None  # first time the training was reported running
    finished: float | None = None
    rss_after_training: int | None = None
    summary: dict | None = None
    encrypted: dict | None = None
    decrypted: dict | None = None


def _walk(app: RunningApp, run: Run) -> None:
    client = Client(app.url, verbose=False, download_files=False)
    job = client.submit(**TRAINING, seed=run.index, api_name="/train")
    while not job.done():
        status = job.status()
        run.statuses.append((status.code, status.rank, status.queue_size))
        if run.started is None and status.code in (Status.PROCESSING, Status.PROGRESS, Status.ITERATING):
            run.started = time.monotonic()
        time.sleep(0.1)
    run.summary = job.result()[0]
    run.finished = time.monotonic()
    run.rss_after_training = _rss(app.pid)
    client.predict(n_bits=6, api_name="/compile")
    client.predict(api_name="/keygen")
    run.encrypted = client.predict(sample_index=run.index * 7, api_name="/encrypt")[0]
    client.predict(api_name="/run_fhe")
    run.decrypted = client.predict(api_name="/decrypt")[0]
    end_tab(app.url, client.session_hash)
    client.close()


def _leftovers(tmp: Path) -> list[str]:
    """What the app's temp directory holds that belongs to sessions (Ray's own logs excluded)."""
    found = []
    for path in tmp.rglob("*"):
        relative = path.relative_to(tmp)
        top = relative.parts[0]
        if top == "ray" or path.is_dir() and not any(path.iterdir()) and top.startswith("fhe-demo-"):
            continue
        if top.startswith("fhe-demo-") and path.is_file():
            found.append(f"session file {relative}")
        elif top.startswith("tmp") and path.name == "sharedlib.so":
            found.append(f"Concrete circuit {relative.parent}")
        elif top == "gradio" and path.suffix in (".skops", ".zip"):
            found.append(f"Gradio copy {relative}")
    return found


def test_ten_trainings_in_one_process(app_process):
    runs = [Run(i) for i in range(SESSIONS)]
    errors: list[BaseException] = []

    def worker(mine: list[Run]) -> None:
        for run in mine:
            try:
                _walk(app_process, run)
            except BaseException as exc:  # reported below
                errors.append(exc)

    threads = [threading.Thread(target=worker, args=(runs[k::PARALLEL],)) for k in range(PARALLEL)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(900)
    log = app_process.log.read_text(errors="replace")
    assert not errors, f"{errors!r}\n--- app log ---\n{log[-4000:]}"

    # Every training succeeded, and every session got the answer for its own sample.
    digits = load_dataset("digits")
    for run in runs:
        assert run.summary["rounds"] == 1 and run.summary["clients"] == 2 and run.summary["accuracy"] > 0.5
        index = run.index * 7
        assert run.encrypted["sample_index"] == index and run.encrypted["label"] == int(digits.y_test[index])
        assert run.decrypted["label"] == int(digits.y_test[index])
        assert run.decrypted["prediction"] == run.decrypted["clear_prediction"]

    # That trainings take turns (and waiting visitors are told their place) is the training
    # runtime's rule, checked without clocks in tests/fl_training/test_runtime.py: start and end times seen
    # from here, through a client that polls, cannot tell "one at a time" from "polled late".

    # Memory levels off: the second half of the runs adds little. A leak raises the floor of
    # every later sample; a transient peak raises one sample only, so floors are compared.
    by_time = [run.rss_after_training for run in sorted(runs, key=lambda r: r.finished)]
    halfway = SESSIONS // 2
    late_growth = min(by_time[-SETTLE_RUNS:]) - min(by_time[halfway - SETTLE_RUNS : halfway])
    print("RSS after each training (MB):", [round(rss / 2**20) for rss in by_time])
    assert late_growth < MAX_LATE_GROWTH_BYTES, [round(rss / 2**20) for rss in by_time]

    # Once the tabs are closed, nothing of the sessions remains (what the app held before any
    # session, its prepared defaults, stays until shutdown).
    held = set(app_process.held_by_the_app)
    deadline = time.monotonic() + 30
    while (leftovers := set(_leftovers(app_process.tmp)) - held) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not leftovers, leftovers

    # Stopped as `kill` or `docker stop` would, the app removes its own directories too.
    app_process.process.terminate()
    assert app_process.process.wait(60) == 0
    remaining = [p.name for p in app_process.tmp.iterdir()
                 if p.name.startswith("fhe-demo-") or (p / "sharedlib.so").exists()]
    assert not remaining, remaining
