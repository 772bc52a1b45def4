"""Secure aggregation benchmark: accuracy and time with and without SecAgg+, and what the server sees.

Runs ``python -m fl_training`` in fresh processes on the default settings
(mnist-5k, 10 clients × 5 rounds, IID, seed 0): in the clear, with
``--secure-aggregation``, and both again with differential privacy; prints
accuracy, wall-clock, the federated part of it, ε, the largest weight
difference between the clear and the secure model, and the centrally
trained baseline on the same split. With ``--figures DIR`` it also draws what
the server received from one client in round 1, clear and masked (the images
the app shows), as ``server-view-clear.png`` and ``server-view-masked.png``.

    .venv/bin/python benchmarks/bench_secure_aggregation.py [--json] [--figures docs]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = {
    "clear": [],
    "secure aggregation": ["--secure-aggregation"],
    "DP (default noise and clipping), server clips": ["--dp"],
    "DP + secure aggregation, clients clip": ["--dp", "--secure-aggregation"],
}


def cli(extra: list[str]) -> tuple[dict, object]:
    """``python -m fl_training`` on the defaults in a fresh process: its summary, wall-clock and model."""
    from fl_training.model_io import load_model

    with tempfile.TemporaryDirectory() as tmp:
        output = os.path.join(tmp, "model.skops")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "fl_training", "--output", output, "--json", *extra],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        summary["wall_seconds"] = time.perf_counter() - start
        return summary, load_model(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--figures", type=Path, help="directory for the clear and masked update images")
    args = parser.parse_args()

    import numpy as np

    from fl_training.task import baseline_accuracy

    results = {name: cli(extra) for name, extra in RUNS.items()}
    clear_model, secure_model = results["clear"][1], results["secure aggregation"][1]
    difference = float(np.abs(clear_model.coef_ - secure_model.coef_).max() / np.abs(clear_model.coef_).max())
    report = {
        "baseline_accuracy": baseline_accuracy("mnist-5k"),
        "weight_difference_clear_vs_secure": difference,
        "runs": {name: {"accuracy": s["accuracy"], "wall_seconds": round(s["wall_seconds"], 1),
                        "federated_seconds": s["seconds"], "epsilon": s.get("epsilon")}
                 for name, (s, _) in results.items()},
    }
    if args.figures:
        from story.updates import view_from_summary
        from ui.updates_panel import update_figure

        args.figures.mkdir(parents=True, exist_ok=True)
        for name, kind in (("clear", "clear"), ("secure aggregation", "masked")):
            summary, model = results[name]
            view = view_from_summary(summary, model.coef_)
            report[f"resemblance_{kind}"] = view.resemblance
            update_figure(view).savefig(args.figures / f"server-view-{kind}.png", dpi=100)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'run':<48} {'accuracy':>8} {'wall s':>7} {'fed. s':>7} {'epsilon':>8}")
    for name, run in report["runs"].items():
        eps = f"{run['epsilon']:.1f}" if run["epsilon"] is not None else "-"
        print(f"{name:<48} {run['accuracy']:>8.3f} {run['wall_seconds']:>7.1f} "
              f"{run['federated_seconds']:>7.1f} {eps:>8}")
    print(f"centrally trained baseline, same split: {report['baseline_accuracy']:.3f}")
    print(f"largest weight difference, clear vs secure model: {difference:.1e} of the largest weight")
    for kind in ("clear", "masked"):
        if (value := report.get(f"resemblance_{kind}")) is not None:
            print(f"round-1 update the server received ({kind}): resemblance {value:.2f}")


if __name__ == "__main__":
    main()
