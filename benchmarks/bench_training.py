"""Federated training benchmark: wall-clock time and accuracy of the CLI runs.

Runs ``python -m fl_training`` as a user would (a fresh process each time, Ray
start-up included) and prints one row per setting.

    .venv/bin/python benchmarks/bench_training.py [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

SETTINGS = {
    "iid (10 clients x 5 rounds)": ["--partition", "iid"],
    "dirichlet alpha 0.3": ["--partition", "dirichlet", "--alpha", "0.3"],
    "pathological 2 classes/client": ["--partition", "pathological", "--classes-per-client", "2"],
    "iid + DP (noise 0.5, clip 5)": ["--partition", "iid", "--dp"],
}


def run(extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "fl_training", "--dataset", "mnist-5k", "--clients", "10",
            "--rounds", "5", "--seed", "0", "--output", os.path.join(tmp, "model.skops"), "--json", *extra,
        ]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall_seconds": wall, "accuracy": summary["accuracy"], "epsilon": summary.get("epsilon")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = {name: run(extra) for name, extra in SETTINGS.items()}
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.json:
        print(json.dumps({"machine": machine, "runs": rows}))
        return
    print(f"mnist-5k, 10 clients, 5 rounds, CLI wall-clock ({machine})")
    print(f"{'setting':34} {'seconds':>8} {'accuracy':>9} {'epsilon':>8}")
    for name, row in rows.items():
        eps = f"{row['epsilon']:.1f}" if row["epsilon"] is not None else "-"
        print(f"{name:34} {row['wall_seconds']:8.1f} {row['accuracy']:9.3f} {eps:>8}")


if __name__ == "__main__":
    main()
