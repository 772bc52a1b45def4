"""Command line: ``python -m fl_training --dataset mnist-5k --clients 10 --rounds 5``,
``python -m fl_training join --superlink HOST:PORT --drawings my-drawings.npz`` for a class's participant,
and ``python -m fl_training evaluate --model model.skops --images FILE --labels FILE`` to score a model on
your own data.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path

from fl_training.config import PARTITIONINGS, STRATEGIES, TrainingConfig
from fl_training.datasets import DATASET_NAMES, DEFAULT_DATASET, DatasetUnavailableError
from fl_training.model_io import MODEL_FORMATS, save_model


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainingConfig()
    p = argparse.ArgumentParser(
        prog="python -m fl_training",
        description="Train a logistic regression with federated learning (Flower simulation) "
        "and export it for the FHE side.",
    )
    p.add_argument("--dataset", choices=DATASET_NAMES, default=DEFAULT_DATASET)
    p.add_argument("--clients", type=int, default=defaults.num_clients, help="number of clients")
    p.add_argument("--rounds", type=int, default=defaults.num_rounds, help="federated rounds")
    p.add_argument("--partition", choices=PARTITIONINGS, default=defaults.partitioning)
    p.add_argument("--alpha", type=float, default=defaults.alpha, help="Dirichlet concentration")
    p.add_argument(
        "--classes-per-client", type=int, default=defaults.classes_per_client,
        help="labels per client with --partition pathological",
    )
    p.add_argument("--strategy", choices=STRATEGIES, default=defaults.strategy)
    p.add_argument("--local-epochs", type=int, default=defaults.local_epochs)
    p.add_argument("--proximal-mu", type=float, default=defaults.proximal_mu, help="FedProx only")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--dp", action="store_true", help="differentially private training (FedAvg)")
    p.add_argument("--noise-multiplier", type=float, default=defaults.noise_multiplier)
    p.add_argument("--clipping-norm", type=float, default=defaults.clipping_norm)
    p.add_argument(
        "--secure-aggregation", action="store_true",
        help="SecAgg+: the server only sees the sum of the clients' updates (with --dp, clients clip)",
    )
    p.add_argument("--client-data", default=defaults.client_data, metavar="DIR",
                   help="train each client on its drawings file DIR/client-<i>.npz instead of a partition")
    p.add_argument("--initial-model", default=defaults.initial_model, metavar="FILE",
                   help="start from this model file (.skops) instead of zeros")
    p.add_argument("--deskew", action=argparse.BooleanOptionalAction, default=defaults.deskew,
                   help="each client deskews its images (MNIST; the model records it)")
    p.add_argument("--output", default="model.skops", help="where to write the model ('' to skip)")
    p.add_argument(
        "--format", choices=MODEL_FORMATS, default=None,
        help="model format (default: from the suffix; pickle only for compatibility)",
    )
    p.add_argument("--json", action="store_true", help="end with one JSON line of results")
    p.add_argument("--verbose", action="store_true", help="show Flower's own log")
    return p


def build_join_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fl_training join",
        description="Take part in a class's federated training from this machine: a Flower SuperNode "
        "that trains on your own drawings file (exported from the app); the drawings never leave it.",
    )
    p.add_argument("--superlink", required=True, metavar="HOST:PORT",
                   help="the teacher's SuperLink (Fleet API)")
    p.add_argument("--drawings", required=True, metavar="FILE", help="your drawings (my-drawings.npz)")
    p.add_argument("--dataset", choices=DATASET_NAMES, default=DEFAULT_DATASET,
                   help="the dataset the class trains (its drawings' format)")
    p.add_argument("--port", type=int, default=0,
                   help="this SuperNode's own ClientAppIo port (0: a free one)")
    p.add_argument("--dry-run", action="store_true", help="check the file and print the command only")
    return p


def join(argv: list[str]) -> int:
    """Check the drawings file here, then become a SuperNode of the teacher's federation."""
    args = build_join_parser().parse_args(argv)
    from fl_training.datasets import load_dataset
    from fl_training.local_data import DrawingsFileError, load_drawings

    path = Path(args.drawings).resolve()
    try:
        X, y = load_drawings(path, load_dataset(args.dataset))
    except DrawingsFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    port = args.port or _free_port()
    command = [
        str(Path(sys.executable).with_name("flower-supernode")), "--insecure", "--superlink", args.superlink,
        "--host", "127.0.0.1", "--port", str(port), "--node-config", f"drawings='{path}'",
    ]
    print(f"{len(y)} drawings checked ({path.name}); they stay on this machine. Joining {args.superlink} …",
          flush=True)
    if args.dry_run:
        print(" ".join(command))
        return 0
    os.execv(command[0], command)  # the SuperNode replaces this process (Ctrl-C stops it)
    return 0  # pragma: no cover - execv does not return


def build_evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fl_training evaluate",
        description="Score a model file on your own images (MNIST's IDX format, gzipped or not), "
        "preprocessed as the model records (e.g. deskewed).",
    )
    p.add_argument("--model", required=True, metavar="FILE", help="a model file (.skops)")
    p.add_argument("--images", required=True, metavar="FILE", help="e.g. t10k-images-idx3-ubyte.gz")
    p.add_argument("--labels", required=True, metavar="FILE", help="e.g. t10k-labels-idx1-ubyte.gz")
    p.add_argument("--json", action="store_true", help="end with one JSON line of results")
    return p


def score_on_files(
    model_path: str | os.PathLike, images: str | os.PathLike, labels: str | os.PathLike
) -> dict:
    """Accuracy of a model file on IDX images and labels, after the preprocessing the model records.

    Raises
    ------
    ValueError
        If a file is unusable (``ModelFileError``, ``IDXFileError``) or the images do not fit the model.
    """
    import numpy as np

    from fl_training.idx import load_images_and_labels
    from fl_training.model_io import load_model
    from fl_training.preprocessing import model_preprocessing, preprocess

    if not Path(model_path).is_file():
        raise ValueError(f"{model_path} does not exist; pass a model file saved by python -m fl_training.")
    model = load_model(model_path)
    X, y, image_shape = load_images_and_labels(images, labels)
    n_features = int(np.atleast_2d(model.coef_).shape[1])
    if n_features != X.shape[1]:
        raise ValueError(
            f"The model takes {n_features} features, but the images are {image_shape[0]}×{image_shape[1]} "
            f"({X.shape[1]} pixels): pass images of the dataset the model was trained on."
        )
    unknown = sorted(set(np.unique(y).tolist()) - set(np.asarray(model.classes_).tolist()))
    preprocessing = model_preprocessing(model)
    accuracy = float(np.mean(model.predict(preprocess(X, preprocessing, image_shape)) == y))
    return {"model": str(model_path), "images": str(images), "samples": len(y), "accuracy": accuracy,
            "preprocessing": preprocessing, "labels_the_model_lacks": unknown}


def evaluate(argv: list[str]) -> int:
    """``python -m fl_training evaluate``: print a model's accuracy on IDX files."""
    args = build_evaluate_parser().parse_args(argv)
    try:
        result = score_on_files(args.model, args.images, args.labels)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"accuracy {result['accuracy']:.4f} on {result['samples']:,} images of {Path(args.images).name} "
          f"(preprocessing: {result['preprocessing']})", flush=True)
    if result["labels_the_model_lacks"]:
        print(f"note: labels {result['labels_the_model_lacks']} are not classes of the model", flush=True)
    if args.json:
        print(json.dumps(result), flush=True)
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["join"]:
        return join(argv[1:])
    if argv[:1] == ["evaluate"]:
        return evaluate(argv[1:])
    args = build_parser().parse_args(argv)
    engine = None
    try:
        config = TrainingConfig(
            dataset=args.dataset,
            num_clients=args.clients,
            num_rounds=args.rounds,
            partitioning=args.partition,
            alpha=args.alpha,
            classes_per_client=args.classes_per_client,
            strategy=args.strategy,
            local_epochs=args.local_epochs,
            proximal_mu=args.proximal_mu,
            seed=args.seed,
            differential_privacy=args.dp,
            noise_multiplier=args.noise_multiplier,
            clipping_norm=args.clipping_norm,
            secure_aggregation=args.secure_aggregation,
            client_data=args.client_data,
            initial_model=args.initial_model,
            deskew=args.deskew,
        )
        from fl_training.runtime import TrainingRuntime
        from fl_training.simulation import TrainingResult, stream_training

        result = None
        # One run: no warm-up (it would only add a run), and the engine goes with the process.
        engine = TrainingRuntime(warm_up=False, flower_logs=args.verbose)
        engine.start()
        for item in stream_training(config, runtime_=engine):
            if isinstance(item, TrainingResult):
                result = item
                continue
            eps = f"  epsilon {item.epsilon:.2f}" if item.epsilon is not None else ""
            dropped = f"  {item.dropped_clients} client(s) dropped out" if item.dropped_clients else ""
            print(
                f"round {item.round}/{config.num_rounds}  accuracy {item.accuracy:.4f}  "
                f"loss {item.loss:.4f}  {item.seconds:6.1f} s{eps}{dropped}",
                flush=True,
            )
    except (ValueError, DatasetUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: training failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if engine is not None:
            engine.close(graceful=False)  # the result is in; nothing of the engine is worth waiting for

    summary = result.summary()
    if args.output:
        path = save_model(result.model, args.output, fmt=args.format)
        summary["output"] = str(path)
    print(
        f"done: accuracy {result.accuracy:.4f} on {summary['dataset']}'s held-out test split, "
        f"{result.seconds:.1f} s" + (f", model in {summary['output']}" if args.output else ""),
        flush=True,
    )
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
