"""The same Flower App on Flower's Deployment Engine: a SuperLink and SuperNodes on loopback,
driven by ``flwr run``, in the clear and with secure aggregation."""

import contextlib
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
from tests.helpers import ROOT, free_port

#: Real SuperLink and SuperNode processes and `flwr run`: minutes on 2 cores.
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _wait_for_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@contextlib.contextmanager
def loopback_federation(workdir: Path, partitions: int, nodes: int, node_configs: list[str] | None = None):
    """A SuperLink and ``nodes`` SuperNodes (partitions 0 … nodes-1 of ``partitions``, or each with its
    own node config from ``node_configs``); yields flwr's env."""
    home = workdir / "flwr-home"
    home.mkdir(parents=True)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    link_port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "loopback"\n\n[superlink.loopback]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    procs = []

    def start(*args, log):
        procs.append(
            subprocess.Popen(
                [str(BIN / args[0]), *args[1:]], cwd=workdir, env=env,
                stdout=open(workdir / log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
            )
        )

    try:
        start("flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(link_port),
              log="link.log")
        _wait_for_port(link_port)
        for i in range(nodes):
            start(
                "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{link_port}",
                "--host", "127.0.0.1", "--port", str(free_port()),
                "--node-config",
                node_configs[i] if node_configs else f"partition-id={i} num-partitions={partitions}",
                log=f"node{i}.log",
            )
        yield env
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def flwr_run(env: dict, run_config: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, str]:
    proc = subprocess.run(
        [str(BIN / "flwr"), "run", str(ROOT), "loopback", "--run-config", run_config, "--stream"],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    return proc, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def two_supernodes(tmp_path_factory):
    with loopback_federation(tmp_path_factory.mktemp("federation"), partitions=2, nodes=2) as env:
        yield env


@pytest.fixture(scope="module")
def clear_run(two_supernodes, tmp_path_factory):
    """A run in the clear whose run config leaves num-clients out: the SuperNodes say how many."""
    output = tmp_path_factory.mktemp("clear") / "model.skops"
    proc, logs = flwr_run(two_supernodes, f"dataset='digits' num-server-rounds=1 output='{output}'")
    return proc, logs, output


def test_flwr_run_without_num_clients_trains_on_the_connected_supernodes(clear_run):
    proc, logs, output = clear_run
    assert proc.returncode == 0, logs[-3000:]
    assert "Federation ready: 2 SuperNodes" in logs
    assert "aggregation in the clear" in logs and "round 1: accuracy" in logs
    model = load_model(output)
    d = load_dataset("digits")
    assert model.coef_.shape == (10, 64)
    assert model.score(d.X_test, d.y_test) > 0.85


def test_secure_aggregation_on_the_deployment_engine_matches_the_clear_run(
    two_supernodes, clear_run, tmp_path
):
    output = tmp_path / "secure.skops"
    run_config = (f"dataset='digits' num-server-rounds=1 num-clients=2 secure-aggregation=true "
                  f"output='{output}'")
    proc, logs = flwr_run(two_supernodes, run_config)
    assert proc.returncode == 0, logs[-3000:]
    assert "secure aggregation (SecAgg+)" in logs and "round 1: accuracy" in logs
    d = load_dataset("digits")
    secure, clear = load_model(output), load_model(clear_run[2])
    assert abs(secure.score(d.X_test, d.y_test) - clear.score(d.X_test, d.y_test)) <= 0.005
    # The same model up to SecAgg+'s quantization (weights are in raw-feature units here).
    assert abs(secure.coef_ - clear.coef_).max() <= 1e-3 * abs(clear.coef_).max()


def test_a_run_whose_supernodes_never_arrive_fails_clearly_within_the_wait(tmp_path):
    with loopback_federation(tmp_path, partitions=2, nodes=1) as env:
        start = time.monotonic()
        # Long enough for the one SuperNode to start its ClientApp and say which partition it holds.
        proc, logs = flwr_run(env, "dataset='digits' num-server-rounds=1 node-wait-seconds=20", timeout=180)
        elapsed = time.monotonic() - start
    assert "Waiting for SuperNodes: 1 of 2 partitions have a SuperNode" in logs, logs[-3000:]
    assert "Gave up after 20 s waiting for the SuperNodes" in logs and "missing partition 1" in logs
    assert "round 1: accuracy" not in logs
    assert elapsed < 90, f"the run took {elapsed:.0f} s to give up"


def test_a_class_on_its_own_machines_trains_each_supernode_on_its_own_drawings(tmp_path):
    """Three participants export their drawings and join with SuperNodes; SecAgg+; the model comes back."""
    from fl_training.local_data import save_drawings
    from fl_training.model_io import save_model
    from fl_training.task import train_centralized

    mnist = load_dataset("mnist-5k")
    files = []
    for k in range(3):
        rows = slice(40 * k, 40 * k + 30)
        files.append(save_drawings(tmp_path / f"participant{k}.npz", mnist.X_train[rows], mnist.y_train[rows],
                                   mnist))
    start_model = save_model(train_centralized(mnist, max_iter=50), tmp_path / "mnist.skops")
    output = tmp_path / "class.skops"
    configs = [f"drawings='{path}'" for path in files]
    with loopback_federation(tmp_path, partitions=3, nodes=3, node_configs=configs) as env:
        run_config = (f"dataset='mnist-5k' num-clients=3 num-server-rounds=2 local-epochs=1 "
                      f"secure-aggregation=true initial-model='{start_model}' output='{output}'")
        proc, logs = flwr_run(env, run_config)
    assert proc.returncode == 0, logs[-3000:]
    assert "Federation ready: 3 SuperNodes" in logs and "secure aggregation (SecAgg+)" in logs
    assert "round 2: accuracy" in logs
    from fhe_model.connection import FHEServerHandle
    from story import SessionRegistry

    (tmp_path / "app").mkdir()
    registry = SessionRegistry(FHEServerHandle(), temp_dir=tmp_path / "app")
    try:
        summary = registry.new_session().use_uploaded_model(output, "mnist-5k")
    finally:
        registry.close_all()
    assert summary["accuracy"] > 0.8  # started from the MNIST model: one local epoch keeps it
