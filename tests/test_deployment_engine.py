"""The same Flower App on Flower's Deployment Engine: a SuperLink and two
SuperNodes on loopback, driven by ``flwr run``."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fl_training.datasets import load_dataset
from fl_training.model_io import load_model

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture
def federation(tmp_path):
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    link_port = _free_port()
    (tmp_path / "flwr-home").mkdir()
    (tmp_path / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    procs = []

    def start(*args, log):
        procs.append(
            subprocess.Popen(
                [str(BIN / args[0]), *args[1:]], cwd=tmp_path, env=env,
                stdout=open(tmp_path / log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
            )
        )

    start("flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link_port), log="link.log")
    _wait_for_port(link_port)
    for i in range(2):
        start(
            "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
            "--host", "127.0.0.1", "--port", str(_free_port()),
            "--node-config", f"partition-id={i} num-partitions=2", log=f"node{i}.log",
        )
    yield env
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)


def test_flwr_run_on_a_superlink_with_two_supernodes_writes_a_working_model(federation, tmp_path):
    output = tmp_path / "model.skops"
    run_config = f"dataset='digits' num-server-rounds=2 num-clients=2 output='{output}'"
    proc = subprocess.run(
        [str(BIN / "flwr"), "run", str(ROOT), "loopback", "--run-config", run_config, "--stream"],
        env=federation, capture_output=True, text=True, timeout=600,
    )
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-3000:]
    assert "round 2: accuracy" in logs
    model = load_model(output)
    d = load_dataset("digits")
    assert model.coef_.shape == (10, 64)
    assert model.score(d.X_test, d.y_test) > 0.85
