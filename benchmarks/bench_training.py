"""Federated training benchmark: the CLI beside ``flwr run .``, the warm runtime, and accuracy.

Prints, on the same settings (mnist-5k, 10 clients × 5 rounds, IID, seed 0):

1. wall-clock of ``python -m fl_training`` and of ``flwr run .`` (a local
   SuperLink in simulation mode, started by ``flwr`` itself and stopped after),
   each a fresh process as a user would type it, side by side;
2. where a run's time goes on the warm training runtime the app uses:
   start-up (imports, Ray, actors), each round, and the engine's teardown;
3. click → result of the app's default training (5 clients × 3 rounds) on a
   warm runtime, and its first round;
4. accuracy for a few partitionings and DP (CLI), beside a centrally trained model.

    .venv/bin/python benchmarks/bench_training.py [--json] [--skip-flwr-run] [--skip-settings]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "iid": ["--partition", "iid"],
    "dirichlet alpha 0.3": ["--partition", "dirichlet", "--alpha", "0.3"],
    "pathological 2 classes/client": ["--partition", "pathological", "--classes-per-client", "2"],
    "iid + DP (defaults)": ["--partition", "iid", "--dp"],
}
CLIENTS, ROUNDS, DATASET = 10, 5, "mnist-5k"


def cli(extra: list[str]) -> dict:
    """``python -m fl_training`` in a fresh process: wall-clock and its JSON summary."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "fl_training", "--dataset", DATASET, "--clients", str(CLIENTS),
               "--rounds", str(ROUNDS), "--seed", "0", "--output", os.path.join(tmp, "model.skops"), "--json",
               *extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        wall = time.perf_counter() - start
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_seconds": wall, "accuracy": summary["accuracy"], "epsilon": summary.get("epsilon")}


def flwr_run() -> dict:
    """``flwr run .`` on the same settings, with a throw-away Flower home; its SuperLink is stopped after."""
    home = tempfile.mkdtemp(prefix="flwr-home-")
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "FLWR_HOME": home, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    out = os.path.join(home, "model.skops")
    cmd = [str(Path(sys.executable).parent / "flwr"), "run", ".", "--stream",
           "--federation-config", f"num-supernodes={CLIENTS}",
           "--run-config",
           f"dataset='{DATASET}' num-server-rounds={ROUNDS} num-clients={CLIENTS} output='{out}'"]
    start = time.perf_counter()
    try:
        subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env=env, timeout=600,
                       start_new_session=True)
        wall = time.perf_counter() - start
        from fl_training.datasets import load_dataset
        from fl_training.model_io import load_model
        from fl_training.preprocessing import model_inputs

        dataset = load_dataset(DATASET)
        model = load_model(out)
        accuracy = float(model.score(model_inputs(model, dataset.X_test, dataset), dataset.y_test))
    finally:
        # The local SuperLink `flwr run` started keeps running in the background: stop it.
        _stop_processes_mentioning(home)
        shutil.rmtree(home, ignore_errors=True)
    return {"wall_seconds": wall, "accuracy": accuracy}


def _stop_processes_mentioning(text: str) -> None:
    import psutil

    for process in psutil.process_iter(["cmdline"]):
        if process.pid != os.getpid() and any(text in part for part in process.info["cmdline"] or []):
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def breakdown() -> dict:
    """Where a run goes on the warm runtime: start-up, rounds, teardown; and the app's default click."""
    from fl_training.config import TrainingConfig
    from fl_training.runtime import TrainingRuntime
    from fl_training.simulation import TrainingResult, stream_training
    from fl_training.task import partition_indices

    start = time.perf_counter()
    engine = TrainingRuntime(warm_up=True)
    assert engine.wait_ready(), "the training runtime did not start"
    startup = time.perf_counter() - start
    try:
        config = TrainingConfig(dataset=DATASET, num_clients=CLIENTS, num_rounds=ROUNDS, seed=0)
        partition_indices(config)
        marks, t = [], time.perf_counter()
        for item in stream_training(config, runtime_=engine):
            marks.append(time.perf_counter() - t)
            if isinstance(item, TrainingResult):
                result = item
        engine.wait_idle()
        teardown = time.perf_counter() - t - marks[-1]
        rounds = [b - a for a, b in zip(marks[:-2], marks[1:-1], strict=True)]

        app_default = TrainingConfig(dataset=DATASET, num_clients=5, num_rounds=3, seed=1)
        partition_indices(app_default)
        t, first_round, click = time.perf_counter(), None, None
        for item in stream_training(app_default, runtime_=engine):
            if first_round is None and getattr(item, "round", None) == 1:
                first_round = time.perf_counter() - t
            if isinstance(item, TrainingResult):
                click = time.perf_counter() - t
    finally:
        engine.close()
    return {
        "startup_seconds": startup,
        "round_zero_seconds": marks[0],
        "round_seconds": rounds,
        "result_seconds": marks[-1],
        "teardown_seconds": teardown,
        "accuracy": result.accuracy,
        "app_default_click_to_result_seconds": click,
        "app_default_first_round_seconds": first_round,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip-flwr-run", action="store_true")
    parser.add_argument("--skip-settings", action="store_true")
    args = parser.parse_args()
    from fl_training.datasets import load_dataset
    from fl_training.preprocessing import model_inputs
    from fl_training.task import train_centralized

    dataset = load_dataset(DATASET)
    central = train_centralized(dataset)
    report: dict = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                   f"Python {platform.python_version()}",
        "central_accuracy": float(
            central.score(model_inputs(central, dataset.X_test, dataset), dataset.y_test)),
        "cli": cli([]),
    }
    if not args.skip_flwr_run:
        report["flwr_run"] = flwr_run()
        report["cli_over_flwr_run"] = report["cli"]["wall_seconds"] / report["flwr_run"]["wall_seconds"]
    report["warm_runtime"] = breakdown()
    if not args.skip_settings:
        report["settings"] = {name: cli(extra) for name, extra in SETTINGS.items()}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{DATASET}, {CLIENTS} clients × {ROUNDS} rounds, IID, seed 0 ({report['machine']})")
    print(f"centrally trained model: accuracy {report['central_accuracy']:.3f}")
    ours = report["cli"]
    print(f"python -m fl_training   {ours['wall_seconds']:6.1f} s  accuracy {ours['accuracy']:.3f}")
    if "flwr_run" in report:
        run = report["flwr_run"]
        print(f"flwr run .              {run['wall_seconds']:6.1f} s  accuracy {run['accuracy']:.3f}")
        print(f"CLI / flwr run          {report['cli_over_flwr_run']:6.2f} ×")
    warm = report["warm_runtime"]
    rounds = ", ".join(f"{r:.2f}" for r in warm["round_seconds"])
    print(f"warm runtime: start-up {warm['startup_seconds']:.1f} s (once, before any click); round 0 at "
          f"{warm['round_zero_seconds']:.2f} s; rounds {rounds} s; "
          f"result at {warm['result_seconds']:.2f} s; teardown after it {warm['teardown_seconds']:.2f} s")
    print(f"app default (5 clients × 3 rounds) on the warm runtime: first round "
          f"{warm['app_default_first_round_seconds']:.2f} s, click → result "
          f"{warm['app_default_click_to_result_seconds']:.2f} s")
    for name, row in report.get("settings", {}).items():
        eps = f"{row['epsilon']:.1f}" if row["epsilon"] is not None else "-"
        print(f"CLI {name:32} {row['wall_seconds']:6.1f} s  accuracy {row['accuracy']:.3f}  epsilon {eps}")


if __name__ == "__main__":
    main()
