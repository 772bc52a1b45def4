"""Command line: ``python -m fhe_model {compile,serve,evaluate,client}``.

Each command imports only the role it plays: ``serve`` never imports the
client module, ``client`` never the server module.
With ``--json`` the last stdout line is one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fl_training.datasets import DATASET_NAMES, DEFAULT_DATASET

EXIT_ERROR = 1


class UserError(Exception):
    """A problem the user can fix; printed without a traceback."""


def _print_table(title: str, rows: dict[str, Any]) -> None:
    print(title)
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        if isinstance(value, float):
            value = f"{value:.4f}"
        print(f"  {key:<{width}}  {value}")


def _emit(args: argparse.Namespace, title: str, data: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(data, default=str))
    else:
        _print_table(title, {k: v for k, v in data.items() if not isinstance(v, (dict, list))})


def _progress_printer(total: int) -> Callable[[int, int, Any], None]:
    step = max(1, total // 10)

    def report(done: int, total: int, sample: Any) -> None:
        if done % step == 0 or done == total:
            print(f"  {done}/{total} samples ({sample.seconds:.3f} s last)", file=sys.stderr, flush=True)

    return report


def _load_dataset(name: str):
    from fl_training.datasets import load_dataset

    return load_dataset(name)


def _load_model(path: str, dataset):
    from fl_training.model_io import check_model, check_model_fits, load_model

    if not Path(path).is_file():
        raise UserError(f"Model file {path} does not exist.")
    model = load_model(path)
    check_model(model)
    check_model_fits(model, dataset)
    return model


def _samples(args: argparse.Namespace, dataset):
    """The first ``--samples`` raw inputs and labels: of ``--images``/``--labels``, else of the test split."""
    n = args.samples
    if n < 1:
        raise UserError(f"--samples must be at least 1, got {n}.")
    if not (args.images or args.labels):
        return dataset.X_test[:n], dataset.y_test[:n]
    if not (args.images and args.labels):
        raise UserError("Pass both --images and --labels (MNIST IDX files), or neither for the test split.")
    from fl_training.idx import load_images_and_labels

    X, y, shape = load_images_and_labels(args.images, args.labels)
    if X.shape[1] != dataset.n_features:
        raise UserError(
            f"The images are {shape[0]}×{shape[1]} ({X.shape[1]} pixels), but the model takes "
            f"{dataset.n_features} features ({dataset.name}): pass images of that dataset, or --dataset."
        )
    return X[:n], y[:n]


def cmd_compile(args: argparse.Namespace) -> None:
    from fhe_model.developer import compile_model, save_deployment

    dataset = _load_dataset(args.dataset)
    model = _load_model(args.model, dataset)
    compiled = compile_model(
        model, dataset, n_bits=args.n_bits, calibration=args.calibration,
        calibration_samples=args.calibration_samples, evaluation_samples=args.evaluation_samples,
    )
    files = save_deployment(compiled, args.output, overwrite=args.overwrite)
    data = {
        **compiled.report.to_dict(),
        "output": str(files.directory),
        "client_zip_bytes": files.client_zip_bytes,
        "server_zip_bytes": files.server_zip_bytes,
    }
    _emit(args, f"Compiled {args.model} -> {files.directory}", data)


def _admin_token(args: argparse.Namespace) -> str | None:
    """The token from --admin-token-file (``-``: stdin's first line) or --admin-token, if any.

    ``$FHE_ADMIN_TOKEN`` is read by ``serve`` itself when neither is given.
    """
    if args.admin_token_file:
        if args.admin_token_file == "-":
            line = sys.stdin.buffer.readline()
        else:
            with open(args.admin_token_file, "rb") as fh:
                line = fh.readline()
        token = line.decode("utf-8", "replace").strip()
        if not token:
            raise UserError(f"--admin-token-file {args.admin_token_file}: no token on its first line.")
        return token
    if args.admin_token:
        logging.getLogger("fhe_model").warning(
            "--admin-token is visible to every user of this machine in the process list; "
            "prefer the FHE_ADMIN_TOKEN environment variable or --admin-token-file."
        )
    return args.admin_token


def cmd_serve(args: argparse.Namespace) -> None:
    from fhe_model.http_server import HTTPSettings, serve
    from fhe_model.server import StoreLimits

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    settings = HTTPSettings(**({"workers": args.workers} if args.workers else {}),
                            max_concurrent_requests=args.max_concurrent)
    limits = StoreLimits(key_ttl_seconds=args.key_ttl, max_keys=args.max_keys,
                         anonymous_key_ttl_seconds=args.anonymous_key_ttl,
                         max_anonymous_keys=args.max_anonymous_keys)
    serve(args.deployment or [], host=args.host, port=args.port, admin_token=_admin_token(args),
          settings=settings, limits=limits, log_level=args.log_level,
          announce_url=args.announce_url, stop_on_stdin_eof=args.stop_on_stdin_eof)


def _key_dir(args: argparse.Namespace, stack: list) -> Path:
    if args.key_dir:
        return Path(args.key_dir)
    tmp = tempfile.TemporaryDirectory(prefix="fhe-keys-")
    stack.append(tmp)
    return Path(tmp.name)


def _check_dataset_fits(info, dataset) -> None:
    if info is not None and info.n_features != dataset.n_features:
        raise UserError(
            f"The deployment's model takes {info.n_features} features (dataset {info.dataset!r}), "
            f"but dataset {dataset.name!r} has {dataset.n_features}. Pass --dataset {info.dataset}."
        )


def cmd_evaluate(args: argparse.Namespace) -> None:
    from fhe_model.client import FHEClient
    from fhe_model.evaluation import evaluate_encrypted, in_process_server_call
    from fl_training.preprocessing import model_inputs, model_preprocessing

    dataset = _load_dataset(args.dataset)
    model = _load_model(args.model, dataset)
    X, y = _samples(args, dataset)
    cleanup: list = []
    try:
        # Refused if the deployment preprocesses otherwise than the clear model it is compared with.
        client = FHEClient(args.deployment, _key_dir(args, cleanup),
                           expect_preprocessing=model_preprocessing(model))
        _check_dataset_fits(client.info, dataset)
        keygen = client.generate_keys()
        run = in_process_server_call(args.deployment, client.evaluation_keys)
        report = evaluate_encrypted(
            client, run, X, y, clear_predictions=model.predict(model_inputs(model, X, dataset)),
            workers=args.workers,
            progress=_progress_printer(len(X)), mode="in-process",
        )
    finally:
        for tmp in cleanup:
            tmp.cleanup()
    data = {**report.to_dict(), "private_key_bytes": keygen.private_key_bytes,
            "evaluation_key_bytes": keygen.evaluation_key_bytes, "preprocessing": client.preprocessing}
    source = args.images or f"{dataset.name}'s test split"
    _emit(args, f"Encrypted evaluation of {args.deployment} on {len(X)} samples of {source}", data)


def cmd_client(args: argparse.Namespace) -> None:
    from fhe_model.client import FHEClient
    from fhe_model.evaluation import evaluate_encrypted, http_server_call
    from fhe_model.http_client import FHEServerClient

    dataset = _load_dataset(args.dataset)
    X, y = _samples(args, dataset)
    cleanup: list = []
    try:
        with FHEServerClient(args.server) as server:
            client_zip = server.download_client_zip(args.deployment_id)
            # Keys are generated here; only evaluation keys and ciphertexts are posted.
            client = FHEClient.from_client_zip(client_zip, _key_dir(args, cleanup))
            _check_dataset_fits(client.info, dataset)
            keygen = client.generate_keys()
            run = http_server_call(server, client.evaluation_keys, args.deployment_id)
            report = evaluate_encrypted(
                client, run, X, y, workers=args.workers,
                progress=_progress_printer(len(X)), mode="http",
            )
    finally:
        for tmp in cleanup:
            tmp.cleanup()
    data = {**report.to_dict(), "server": args.server,
            "private_key_bytes": keygen.private_key_bytes,
            "evaluation_key_bytes": keygen.evaluation_key_bytes,
            "client_zip_bytes": len(client_zip), "preprocessing": client.preprocessing,
            "predictions": [sample.prediction for sample in report.samples]}
    source = args.images or f"{dataset.name}'s test split"
    _emit(args, f"Encrypted inference on {args.server} ({len(X)} samples of {source})", data)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``python -m fhe_model``.

    Returns
    -------
    argparse.ArgumentParser
        With subcommands compile, serve, evaluate and client.
    """
    from fhe_model.developer import CALIBRATION_MODES, DEFAULT_N_BITS, N_BITS_MAX, N_BITS_MIN

    parser = argparse.ArgumentParser(
        prog="python -m fhe_model",
        description="Compile a trained model for FHE, serve it over HTTP, and run encrypted inference.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def json_flag(p: argparse.ArgumentParser) -> None:
        p.add_argument("--json", action="store_true", help="print one JSON object as the last stdout line")

    def inputs_flags(p: argparse.ArgumentParser) -> None:
        # Raw images: the client applies the deployment's recorded preprocessing before it encrypts.
        p.add_argument("--images", default=None, metavar="FILE",
                       help="your images, MNIST IDX (gzipped or not), instead of the test split")
        p.add_argument("--labels", default=None, metavar="FILE", help="their labels, MNIST IDX")

    p = sub.add_parser("compile", help="compile a trained model into client.zip/server.zip")
    p.add_argument("--model", required=True, help="trained LogisticRegression (.skops)")
    p.add_argument("--n-bits", type=int, default=DEFAULT_N_BITS,
                   help=f"quantization bits, {N_BITS_MIN}..{N_BITS_MAX} (default {DEFAULT_N_BITS})")
    p.add_argument("--output", required=True, help="new (or empty) deployment directory")
    p.add_argument("--calibration", choices=CALIBRATION_MODES, default="data",
                   help="'data': training sample; 'random': uniform in the feature range, no data")
    p.add_argument("--calibration-samples", type=int, default=1000)
    p.add_argument("--evaluation-samples", type=int, default=None,
                   help="score only the first N test samples (default: all)")
    p.add_argument("--dataset", choices=DATASET_NAMES, default=DEFAULT_DATASET)
    p.add_argument("--overwrite", action="store_true", help="replace a deployment in --output")
    json_flag(p)
    p.set_defaults(handler=cmd_compile)

    p = sub.add_parser("serve", help="serve deployments over HTTP")
    p.add_argument("--deployment", action="append", metavar="DIR",
                   help="deployment directory; repeat for more, the first is the default")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--admin-token-file", default=None, metavar="PATH",
                   help="enables POST /deployments with the token on PATH's first line ('-': stdin)")
    p.add_argument("--admin-token", default=None,
                   help="the same, but visible in the process list: prefer FHE_ADMIN_TOKEN or "
                        "--admin-token-file")
    p.add_argument("--workers", type=int, default=None, help="threads running circuits (default: CPUs)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="POST requests in progress before 503 (default: 2 x workers)")
    p.add_argument("--key-ttl", type=float, default=3600.0,
                   help="seconds unused keys uploaded with the admin token are kept")
    p.add_argument("--max-keys", type=int, default=256,
                   help="key sets uploaded with the admin token (least recently used evicted past it)")
    p.add_argument("--anonymous-key-ttl", type=float, default=900.0,
                   help="seconds unused keys uploaded without the token are kept")
    p.add_argument("--max-anonymous-keys", type=int, default=64,
                   help="key sets uploaded without the token (uploads refused past it)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--announce-url", action="store_true",
                   help='print {"url": ...} on stdout once listening (with --port 0)')
    p.add_argument("--stop-on-stdin-eof", action="store_true",
                   help="exit when stdin closes (a parent process owns this server)")
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("evaluate", help="encrypted accuracy and speed of a deployment, in-process")
    p.add_argument("--deployment", required=True, metavar="DIR")
    p.add_argument("--model", required=True, help="the clear model, for clear accuracy and agreement")
    p.add_argument("--dataset", choices=DATASET_NAMES, default=DEFAULT_DATASET)
    p.add_argument("--samples", type=int, default=100, help="first N samples (default 100)")
    inputs_flags(p)
    p.add_argument("--workers", type=int, default=None, help="samples in flight (default: CPUs)")
    p.add_argument("--key-dir", default=None, help="keep the private key here (default: temporary)")
    json_flag(p)
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser("client", help="encrypt locally, compute on a remote server, decrypt locally")
    p.add_argument("--server", required=True, metavar="URL", help="e.g. http://127.0.0.1:8765")
    p.add_argument("--dataset", choices=DATASET_NAMES, default=DEFAULT_DATASET,
                   help="whose test samples to send (must match the deployment's model)")
    p.add_argument("--samples", type=int, default=10, help="first N samples (default 10)")
    inputs_flags(p)
    p.add_argument("--deployment-id", default=None, help="default: the server's default deployment")
    p.add_argument("--workers", type=int, default=None, help="samples in flight (default: CPUs + 1)")
    p.add_argument("--key-dir", default=None, help="keep the private key here (default: temporary)")
    json_flag(p)
    p.set_defaults(handler=cmd_client)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 1 on a user-facing error, 2 on bad usage.
    """
    args = build_parser().parse_args(argv)
    # Errors the user can act on. Anything else is a bug and keeps its traceback.
    from fl_training.datasets import DatasetUnavailableError

    user_errors: tuple[type[BaseException], ...] = (UserError, ValueError, OSError, DatasetUnavailableError)
    if args.command in {"client", "evaluate"}:
        from fhe_model.client import FHEClientError

        user_errors += (FHEClientError,)
    if args.command == "client":
        from fhe_model.http_client import FHEServerError

        user_errors += (FHEServerError,)
    try:
        args.handler(args)
    except user_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
