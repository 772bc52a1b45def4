"""Differential privacy's price: test accuracy against ε for a few noise levels.

Trains the federation the app suggests for differential privacy
(``ui.dp_panel.dp_training()``: mnist-5k, 50 clients × 3 rounds, IID, FedAvg)
with server-side DP at each noise multiplier σ, a few seeds each, on the warm
training runtime the app uses, and prints accuracy (mean, min, max) and ε at
δ = 1e-5 beside the same training without DP. With ``--output`` it writes the
figures as JSON; ``ui/dp_tradeoff.json`` is what the app's chart shows.

    .venv/bin/python benchmarks/bench_dp_tradeoff.py [--noise 0.3 0.5 1 2] [--clipping 0.5]
        [--seeds 3] [--output ui/dp_tradeoff.json]

``--clipping`` accepts several values to compare clipping norms (the app's
default, ``fl_training.config.TrainingConfig.clipping_norm``, came from such a run).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOISE = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--noise", type=float, nargs="+", default=list(NOISE), help="noise multipliers σ")
    parser.add_argument("--clipping", type=float, nargs="+", default=None,
                        help="clipping norms C (default: the app's)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per setting")
    parser.add_argument("--clients", type=int, default=None, help="clients (default: the app's DP setting)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default: the app's DP setting)")
    parser.add_argument("--output", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()

    from fl_training import simulation
    from fl_training.config import PRESETS, TrainingConfig

    suggested = PRESETS["differential-privacy"]
    base = replace(suggested, differential_privacy=False, num_clients=args.clients or suggested.num_clients,
                   num_rounds=args.rounds or suggested.num_rounds)
    clippings = args.clipping or [TrainingConfig().clipping_norm]
    simulation.prepare().wait_ready()

    def run(cfg: TrainingConfig) -> tuple[float, float | None, float]:
        start = time.perf_counter()
        result = simulation.train(cfg)
        return result.accuracy, result.history[-1].epsilon, time.perf_counter() - start

    try:
        plain = [run(replace(base, seed=seed))[0] for seed in range(args.seeds)]
        print(f"{base.dataset}, {base.num_clients} clients × {base.num_rounds} rounds, {base.partitioning}, "
              f"{base.strategy}, {args.seeds} seeds; {platform.processor() or platform.machine()}")
        print(f"no DP: accuracy {statistics.mean(plain):.3f} (min {min(plain):.3f}, max {max(plain):.3f})")
        print(f"{'C':>6} {'σ':>5} {'ε':>8} {'accuracy':>9} {'min':>6} {'max':>6} {'s/run':>6}")
        points = []
        for clipping in clippings:
            for noise in args.noise:
                runs = [run(replace(base, seed=seed, differential_privacy=True, noise_multiplier=noise,
                                    clipping_norm=clipping)) for seed in range(args.seeds)]
                accuracy = [r[0] for r in runs]
                epsilon = runs[0][1]
                point = {
                    "clipping_norm": clipping, "noise_multiplier": noise, "epsilon": round(epsilon, 3),
                    "accuracy": round(statistics.mean(accuracy), 4), "accuracy_min": round(min(accuracy), 4),
                    "accuracy_max": round(max(accuracy), 4),
                }
                points.append(point)
                print(f"{clipping:>6g} {noise:>5g} {epsilon:>8.2f} {point['accuracy']:>9.3f} "
                      f"{point['accuracy_min']:>6.3f} {point['accuracy_max']:>6.3f} "
                      f"{statistics.mean(r[2] for r in runs):>6.1f}")
    finally:
        simulation.shutdown()
    if args.output is not None:
        data = {
            "settings": {"dataset": base.dataset, "num_clients": base.num_clients,
                         "num_rounds": base.num_rounds, "partitioning": base.partitioning,
                         "strategy": base.strategy, "local_epochs": base.local_epochs, "seeds": args.seeds,
                         "delta": 1e-5},
            "no_dp_accuracy": round(statistics.mean(plain), 4),
            "points": points,
        }
        args.output.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
