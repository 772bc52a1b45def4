"""What deskewing buys: accuracy with and without it, trained centrally, federated, and on drawn digits.

1. the central baseline (a logistic regression on the whole training split) on mnist-5k and digits;
2. ``python -m fl_training`` (fresh processes, mnist-5k, 10 clients × 5 rounds, seed 0) for the
   settings of ``bench_training.py`` (IID, Dirichlet α = 0.3, pathological with 2 labels per client,
   IID + DP) and the app's DP preset (50 clients × 3 rounds), each ``--deskew`` and ``--no-deskew``,
   scored on the 1,000 held-out test images;
3. drawn digits: the IID models, and the app's default (its form's ``quick`` preset, 5 clients ×
   3 rounds), each with and without deskewing, read sketchpad drawings of simulated writers
   (``class_drawings.py``: digits in fonts, with each writer's own slant, rotation and stroke
   width, drawn as dark strokes on a transparent 280 × 280 canvas) through the app's own
   drawing preparation and the model's recorded preprocessing. No real handwriting ships
   offline: these are rendered digits, not people's pen strokes.

    .venv/bin/python benchmarks/bench_deskew.py [--json] [--writers 40] [--skip-federated] [--settings iid]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_training import CLIENTS, DATASET, ROUNDS, SETTINGS  # noqa: E402

from fl_training.config import PRESETS  # noqa: E402


def federated(extra: list[str], model_path: Path, clients: int = CLIENTS, rounds: int = ROUNDS) -> float:
    """Test accuracy of one ``python -m fl_training`` run, its model written to ``model_path``."""
    cmd = [
        sys.executable,
        "-m",
        "fl_training",
        "--dataset",
        DATASET,
        "--clients",
        str(clients),
        "--rounds",
        str(rounds),
        "--seed",
        "0",
        "--output",
        str(model_path),
        "--json",
        *extra,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["accuracy"])


def central() -> dict[str, dict[str, float]]:
    from fl_training.datasets import load_dataset
    from fl_training.preprocessing import dataset_features, model_preprocessing
    from fl_training.task import train_centralized

    out = {}
    for name in ("mnist-5k", "digits"):
        dataset = load_dataset(name)
        row = {}
        for deskew in (False, True):
            model = train_centralized(dataset, deskew=deskew)
            X_test = dataset_features(dataset, model_preprocessing(model))[1]
            row["deskew" if deskew else "raw"] = float(model.score(X_test, dataset.y_test))
        if name == "digits":  # its training never deskews (no gain): measure the forced variant directly
            from sklearn.linear_model import LogisticRegression

            from fl_training.preprocessing import DESKEW
            from fl_training.task import feature_scaling

            scaling = feature_scaling(dataset)
            X_train, X_test = dataset_features(dataset, DESKEW)
            model = LogisticRegression(max_iter=200).fit(scaling.transform(X_train), dataset.y_train)
            row["deskew"] = float(model.score(scaling.transform(X_test), dataset.y_test))
        out[name] = row
    return out


def drawn(models: dict[str, Path], n_writers: int) -> dict[str, float]:
    """Each model's accuracy on ``n_writers`` × 20 drawings (each digit twice per writer)."""
    from class_drawings import drawings, writers

    from fl_training.datasets import load_dataset
    from fl_training.drawings import drawing_to_features
    from fl_training.model_io import load_model
    from fl_training.preprocessing import model_inputs

    dataset = load_dataset(DATASET)
    labels = [d for d in range(10)] * 2
    X, y = [], []
    for i, writer in enumerate(writers(n_writers, seed=7)):
        for image, label in zip(drawings(writer, labels, seed=1000 + i), labels, strict=True):
            X.append(drawing_to_features(image, dataset))
            y.append(label)
    X, y = np.array(X), np.array(y)
    scores = {}
    for name, path in models.items():
        model = load_model(path)
        scores[name] = float(np.mean(model.predict(model_inputs(model, X, dataset)) == y))
    scores["drawings"] = len(y)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--writers", type=int, default=40)
    parser.add_argument("--skip-federated", action="store_true")
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=list(SETTINGS),
        default=list(SETTINGS),
        help="federated settings to run (iid is always run: the drawings need its models)",
    )
    args = parser.parse_args()
    report: dict = {"central": central()}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_federated:
            rows = {}
            for name, extra in SETTINGS.items():
                if name not in args.settings and name != "iid":
                    continue
                rows[name] = {}
                for flag in ("--no-deskew", "--deskew"):
                    path = Path(tmp) / f"{name.replace(' ', '_').replace('/', '_')}{flag}.skops"
                    rows[name][flag.strip("-")] = federated([*extra, flag], path)
                    print(f"  {name} {flag}: {rows[name][flag.strip('-')]:.3f}", file=sys.stderr, flush=True)
            report["federated"] = rows
            flags = ("--no-deskew", "--deskew")
            models = {f"iid {flag.strip('-')}": Path(tmp) / f"iid{flag}.skops" for flag in flags}
            quick = PRESETS["quick"]
            for flag in flags:
                path = Path(tmp) / f"quick{flag}.skops"
                report["federated"].setdefault("app default (quick preset)", {})[flag.strip("-")] = federated(
                    ["--partition", "iid", flag], path, quick.num_clients, quick.num_rounds
                )
                models[f"app default {flag.strip('-')}"] = path
            if "iid + DP (defaults)" in args.settings:  # the app's DP preset: DP needs many clients
                dp = PRESETS["differential-privacy"]
                report["federated"]["DP preset"] = {
                    flag.strip("-"): federated(
                        ["--partition", "iid", "--dp", flag],
                        Path(tmp) / f"dp{flag}.skops",
                        dp.num_clients,
                        dp.num_rounds,
                    )
                    for flag in flags
                }
            report["drawn"] = drawn(models, args.writers)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for name, row in report["central"].items():
        print(f"central {name:10} raw {row['raw']:.3f}  deskewed {row['deskew']:.3f}")
    for name, row in report.get("federated", {}).items():
        print(f"federated {name:32} raw {row['no-deskew']:.3f}  deskewed {row['deskew']:.3f}")
    if "drawn" in report:
        d = report["drawn"]
        for model in ("iid", "app default"):
            print(
                f"drawn digits, {model} model ({d['drawings']} drawings): raw "
                f"{d[f'{model} no-deskew']:.3f}  deskewed {d[f'{model} deskew']:.3f}"
            )


if __name__ == "__main__":
    main()
