"""How should a class run be made? Measures the choices ``story/class_training.py`` settled.

A simulated class (``class_drawings``: participants writing in fonts, slants and strokes of
their own, 20 drawings each, a fifth held back) is trained with Flower's simulation in
several ways: from zeros or from the app's MNIST model, with or without reference clients
holding MNIST's own training images, with 1 to 10 local epochs. Each line prints the
class model's accuracy on the participants' held-back drawings and on MNIST's test split,
beside the MNIST model's. Accuracy only; times are printed but not a goal here.

Usage::

    python benchmarks/bench_class_design.py [--participants 30] [--rounds 5] [--secure-aggregation]
        [--only TEXT]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from class_drawings import drawings, writers  # noqa: E402

from fl_training import local_data, simulation  # noqa: E402
from fl_training.config import TrainingConfig  # noqa: E402
from fl_training.datasets import load_dataset  # noqa: E402
from fl_training.drawings import drawing_to_features  # noqa: E402
from fl_training.model_io import save_model  # noqa: E402
from fl_training.preprocessing import model_inputs  # noqa: E402
from fl_training.task import train_centralized  # noqa: E402

#: (name, start from the MNIST model, reference clients, images each, local epochs)
VARIANTS = (
    ("zeros, drawings only", False, 0, 0, 10),
    ("MNIST model, drawings only", True, 0, 0, 10),
    ("MNIST model, drawings only, 1 epoch", True, 0, 0, 1),
    ("MNIST model + 10 reference, 3 epochs", True, 10, 360, 3),
    ("MNIST model + 10 reference, 1 epoch", True, 10, 360, 1),
    ("MNIST model + 5 reference x 720, 1 epoch (chosen)", True, 5, 720, 1),
    ("MNIST model + 3 reference x 1200, 1 epoch", True, 3, 1200, 1),
)



def _accuracy(model, X, y, dataset) -> float:
    """Accuracy on raw features, preprocessed as the model records (the default MNIST model deskews)."""
    return float(np.mean(model.predict(model_inputs(model, X, dataset)) == y))

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--participants", type=int, default=30)
    parser.add_argument("--drawings", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--secure-aggregation", action="store_true")
    parser.add_argument("--only", default="", help="run the variants whose name contains this text")
    args = parser.parse_args()
    mnist = load_dataset("mnist-5k")
    rng = np.random.default_rng(1)
    parts = []
    for k, hand in enumerate(writers(args.participants, seed=1)):
        labels = [int(v) for v in rng.permutation(np.resize(np.arange(10), args.drawings))]
        X = np.array([drawing_to_features(image, mnist) for image in drawings(hand, labels, 100 + k)])
        parts.append((X, np.array(labels)))
    held = [local_data.split_drawings(X, y) for X, y in parts]
    X_held, y_held = np.vstack([h[2] for h in held]), np.concatenate([h[3] for h in held])
    start_model = train_centralized(mnist)
    folder = Path(tempfile.mkdtemp(prefix="class-design-"))
    save_model(start_model, folder / "mnist.skops")
    print(f"MNIST model: held-back drawings {_accuracy(start_model, X_held, y_held, mnist):.1%}, "
          f"MNIST test {_accuracy(start_model, mnist.X_test, mnist.y_test, mnist):.1%} "
          f"({len(y_held)} held back)")
    simulation.prepare().wait_ready()
    order = np.random.default_rng(0).permutation(len(mnist.y_train))
    try:
        for name, from_mnist, references, images, epochs in VARIANTS:
            if args.only not in name:
                continue
            run = Path(tempfile.mkdtemp(dir=folder))
            for k, (X, y) in enumerate(parts):
                local_data.save_drawings(local_data.client_file(run, k), X, y, mnist)
            for j in range(references):
                rows = order[j * images:(j + 1) * images]
                local_data.save_reference(local_data.reference_file(run, len(parts) + j), rows, mnist)
            cfg = TrainingConfig(
                num_clients=len(parts) + references, num_rounds=args.rounds, local_epochs=epochs,
                client_data=str(run), initial_model=str(folder / "mnist.skops") if from_mnist else "",
                secure_aggregation=args.secure_aggregation,
            )
            start = time.perf_counter()
            result = simulation.train(cfg)
            print(f"{name:48s} held-back drawings {_accuracy(result.model, X_held, y_held, mnist):.1%}  "
                  f"MNIST test {result.accuracy:.1%}  ({time.perf_counter() - start:.0f} s)", flush=True)
    finally:
        simulation.shutdown()


if __name__ == "__main__":
    main()
