"""What one visitor's session costs in memory and on disk: idle, full on shared work, full on its own.

Runs the story (``story.SessionRegistry``, no UI) in this process with the app's own
FHE server process, and measures three kinds of session:

- **idle**: a session that exists and holds nothing (a page that clicked once);
- **full, shared**: a model, the deployment every visitor of the same model shares,
  keys, a ciphertext, the server's output, the decryption and a small encrypted evaluation;
- **full, own**: the same with a model of its own, hence a compile and a deployment of its own.

Memory is the resident set of this process plus the FHE server's (after a garbage
collection), divided by the number of sessions; disk is what the registry's key and work
directories hold. The session bound in ``story/registry.py`` is sized from these figures.

Usage::

    python benchmarks/session_cost.py [--idle 200] [--shared 20] [--own 6] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fhe_model.connection import FHEServerHandle  # noqa: E402
from fl_training.datasets import load_dataset  # noqa: E402
from fl_training.model_io import save_model  # noqa: E402
from story import SessionRegistry  # noqa: E402

DATASET = "mnist-5k"
#: Samples of the small encrypted evaluation each full session runs.
EVALUATION_SAMPLES = 5


def memory(server: FHEServerHandle) -> tuple[int, int]:
    """Resident bytes of this process and of the FHE server's process tree."""
    gc.collect()
    app = psutil.Process().memory_info().rss
    children = 0
    for child in psutil.Process().children(recursive=True):
        try:
            children += child.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return app, children


def disk(*roots: Path) -> int:
    """Bytes in the files under ``roots``."""
    return sum(p.stat().st_size for root in roots for p in root.rglob("*") if p.is_file())


def model_files(count: int, folder: Path) -> list[Path]:
    """``count`` distinct models of ``DATASET`` (distinct bytes: each compiles on its own)."""
    from sklearn.linear_model import LogisticRegression

    dataset = load_dataset(DATASET)
    base = LogisticRegression(max_iter=200).fit(dataset.X_train, dataset.y_train)
    rng = np.random.default_rng(0)
    files = []
    for k in range(count):
        model = LogisticRegression(max_iter=200).fit(dataset.X_train[:10], dataset.y_train[:10])
        model.__dict__.update(base.__dict__)
        model.coef_ = base.coef_ * (1 + 1e-3 * k * rng.standard_normal(base.coef_.shape))
        files.append(save_model(model, folder / f"model-{k}.skops"))
    return files


def full_flow(session, model_file: Path) -> None:
    session.use_uploaded_model(model_file, DATASET)
    session.compile(8, "data")
    session.generate_keys()
    session.encrypt(sample_index=0)
    session.run_on_server()
    session.decrypt()
    session.evaluate(EVALUATION_SAMPLES)


def measure(registry: SessionRegistry, count: int, prefix: str, files: list[Path] | None) -> dict:
    before_app, before_server = memory(registry.server)
    before_disk = disk(registry.keys_root, registry.work_root)
    for k in range(count):
        session = registry.resolve(None, f"{prefix}-{k}")
        if files is not None:
            full_flow(session, files[k % len(files)])
    after_app, after_server = memory(registry.server)
    after_disk = disk(registry.keys_root, registry.work_root)
    return {
        "sessions": count,
        "app_bytes_per_session": (after_app - before_app) / count,
        "server_bytes_per_session": (after_server - before_server) / count,
        "disk_bytes_per_session": (after_disk - before_disk) / count,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--shared", type=int, default=20)
    parser.add_argument("--own", type=int, default=6)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        registry = SessionRegistry(
            FHEServerHandle(), temp_dir=folder, max_sessions=args.idle + args.shared + args.own + 1
        )
        try:
            registry.server.start()
            files = model_files(args.own + 1, Path(folder))
            # Warm up: Concrete's imports, the dataset, the server's runtime (not a session's cost).
            full_flow(registry.new_session(), files[0])
            results = {
                "idle": measure(registry, args.idle, "idle", None),
                "full_shared": measure(registry, args.shared, "shared", files[:1]),
                "full_own": measure(registry, args.own, "own", files[1:]),
            }
        finally:
            registry.close_all()
            registry.server.stop()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for kind, row in results.items():
        print(
            f"{kind:12s} {row['sessions']:4d} sessions: app {row['app_bytes_per_session'] / 1e6:7.2f} MB, "
            f"FHE server {row['server_bytes_per_session'] / 1e6:7.2f} MB, "
            f"disk {row['disk_bytes_per_session'] / 1e3:8.1f} KB per session"
        )


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    main()
