"""Load test: N concurrent sessions through the whole encrypted flow of a running app.

Each session is its own ``gradio_client`` client (its own browser session as
far as the app knows). All of them start together and run upload (or train),
compile, keygen, encrypt, run_fhe and decrypt. Session k encrypts a test
sample whose true label is k mod 10, so that an answer belonging to another
session shows up as a wrong class; every decrypted prediction is checked
against the clear model's prediction for that sample, computed here from the
model file, and the label /encrypt reports against the dataset.

Prints successes, errors, answers that do not belong to their session (the
decrypted probabilities are far from those of the session's own sample), FHE
answers that differ from the clear model's on a near tie (quantization), and
per-endpoint latency (p50 / p95 / max). Exits non-zero on any error or answer
of another session. Not part of the test suite.

``--workshop defaults`` is a classroom: every session trains with the app's
defaults (mnist-5k, as a participant who just presses the buttons), compiles
and runs the four steps; ``--workshop seeds`` gives session k seed k, so that
every training is a different run. Both report when each session held its
trained model and its decrypted prediction, counted from the common start.

Usage::

    python app.py &
    python benchmarks/load_test.py [--url http://127.0.0.1:7860/] [--sessions 10] [--train] [--json]
    python benchmarks/load_test.py --workshop defaults --sessions 30
    python benchmarks/load_test.py --workshop seeds --sessions 30
    python benchmarks/load_test.py --classroom 30 [--drawings 20] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradio_client import handle_file  # noqa: E402
from visitors import visitor  # noqa: E402

from fl_training.datasets import load_dataset  # noqa: E402
from fl_training.model_io import load_model, save_model  # noqa: E402
from fl_training.preprocessing import model_inputs  # noqa: E402
from fl_training.task import train_centralized  # noqa: E402

STEPS = ("model", "compile", "keygen", "encrypt", "run_fhe", "decrypt")


@dataclass
class SessionResult:
    """What one session saw."""

    session: int
    sample_index: int
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    failed_step: str | None = None
    label: int | None = None
    encrypted_label: int | None = None
    expected: int | None = None
    prediction: int | None = None
    app_clear_prediction: int | None = None
    #: Class probabilities: decrypted by the session, and its own model's in the clear for its sample.
    fhe_probabilities: list[float] | None = None
    clear_probabilities: list[float] | None = None
    #: Seconds from the common start until the session held its model / its decrypted prediction.
    model_at: float | None = None
    done_at: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.correct

    @property
    def correct(self) -> bool:
        return (self.prediction is not None and self.prediction == self.expected
                and self.encrypted_label == self.label)


def pick_samples(dataset, model, sessions: int, min_confidence: float = 0.0) -> list[int]:
    """Choose one distinct test sample per session.

    Parameters
    ----------
    dataset : Dataset
        Where the samples come from.
    model : LogisticRegression or None
        If given, only samples it classifies correctly are chosen.
    sessions : int
        How many sessions.
    min_confidence : float
        With ``model``, only samples it gives at least this probability.

    Returns
    -------
    list of int
        Test indices; session k's has label ``classes[k % n_classes]``.
    """
    y = np.asarray(dataset.y_test)
    agree = np.ones(len(y), bool)
    if model is not None:
        probabilities = model.predict_proba(model_inputs(model, dataset.X_test, dataset))
        read = model.classes_[probabilities.argmax(axis=1)]
        agree = (read == y) & (probabilities.max(axis=1) >= min_confidence)
    classes = list(np.asarray(dataset.classes))
    taken: set[int] = set()
    picks = []
    for k in range(sessions):
        wanted = classes[k % len(classes)]
        index = next(int(i) for i in np.flatnonzero((y == wanted) & agree) if int(i) not in taken)
        taken.add(index)
        picks.append(index)
    return picks


#: Largest L1 distance between a session's decrypted probabilities and its own sample's clear ones
#: that quantization explains (8-bit inputs move them by a few hundredths; another sample's answer
#: moves them by ~2, the sum of both).
NEAR_TIE_L1 = 0.5


def classify_mismatches(results: list[SessionResult]) -> tuple[list[SessionResult], list[SessionResult]]:
    """Split wrong answers into another session's answer and FHE-vs-clear disagreements on a near tie.

    An answer belongs to another session when its decrypted probabilities are far
    from those of the session's own sample in the clear (more than
    :data:`NEAR_TIE_L1`); when they are close, quantization moved a near tie
    between two classes: the answer is this session's, rounded differently.
    """
    foreign, near_ties = [], []
    for r in results:
        if r.prediction is None or r.prediction == r.expected:
            continue
        if r.fhe_probabilities is None or r.clear_probabilities is None:
            foreign.append(r)
            continue
        distance = float(np.abs(np.subtract(r.fhe_probabilities, r.clear_probabilities)).sum())
        (near_ties if distance <= NEAR_TIE_L1 else foreign).append(r)
    return foreign, near_ties


#: How long the sessions wait for each other to connect before they start together.
CONNECT_TIMEOUT_SECONDS = 300


def run_session(args: argparse.Namespace, k: int, index: int, model_file: Path | None, dataset,
                start: threading.Barrier, download_dir: Path) -> SessionResult:
    """Take one new session through the whole flow; never raises.

    Parameters
    ----------
    args : argparse.Namespace
        The command line.
    k : int
        Session number.
    index : int
        Test sample this session encrypts.
    model_file : Path or None
        Model to upload (None with ``--train``).
    dataset : Dataset
        The dataset, to check labels.
    start : threading.Barrier
        Released when every session is connected, so that they all start together.
    download_dir : Path
        Where this client may download output files (the trained model).

    Returns
    -------
    SessionResult
        Timings per step, the answers, or the error and the step it happened in.
    """
    result = SessionResult(session=k, sample_index=index, label=int(dataset.y_test[index]))
    step = "connect"
    try:
        try:
            client = visitor(args.url, download_files=str(download_dir / str(k)))
        finally:
            start.wait(timeout=CONNECT_TIMEOUT_SECONDS)  # a session that could not connect still arrives
        began = time.perf_counter()

        def timed(name: str, **kwargs):
            nonlocal step
            step = name
            begin = time.perf_counter()
            out = client.predict(**kwargs)
            result.seconds[name] = time.perf_counter() - begin
            return out

        if args.workshop == "defaults":
            model = load_model(timed("model", api_name="/train")[5])  # the form as it is
        elif args.workshop == "seeds":
            model = load_model(timed("model", seed=k, api_name="/train")[5])
        elif args.train:
            out = timed("model", dataset=args.dataset, num_clients=2, num_rounds=1, local_epochs=2, seed=k,
                        api_name="/train")
            model = load_model(out[5])  # the trained model file, downloaded
        else:
            timed("model", file=handle_file(str(model_file)), dataset=args.dataset, api_name="/upload_model")
            model = load_model(model_file)
        result.model_at = time.perf_counter() - began
        # The sample as the app's client hands it to the model: preprocessed as the model records.
        sample = model_inputs(model, dataset.X_test[index : index + 1], dataset)
        result.expected = int(model.predict(sample)[0])
        result.clear_probabilities = [float(p) for p in model.predict_proba(sample)[0]]
        timed("compile", n_bits=args.n_bits, calibration="data", api_name="/compile")
        timed("keygen", api_name="/keygen")
        encrypted = timed("encrypt", sample_index=index, source="test sample", api_name="/encrypt")[0]
        result.encrypted_label = encrypted["label"]
        timed("run_fhe", api_name="/run_fhe")
        decrypted = timed("decrypt", api_name="/decrypt")[0]
        result.prediction = decrypted["prediction"]
        result.app_clear_prediction = decrypted["clear_prediction"]
        result.fhe_probabilities = [float(p) for p in decrypted["probabilities"]]
        result.done_at = time.perf_counter() - began
        client.close()
    except Exception as exc:  # reported, never raised: one failed session must not hide the others
        result.error = f"{exc.__class__.__name__}: {exc}"
        result.failed_step = step
        if args.verbose:
            traceback.print_exc()
    return result


def percentiles(values: list[float]) -> dict[str, float]:
    """``n``, ``p50``, ``p95`` and ``max`` of a list of latencies (only ``n`` if empty)."""
    if not values:
        return {"n": 0}
    array = np.asarray(values)
    return {"n": len(values), "p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "max": float(array.max())}


def main(argv: list[str] | None = None) -> int:
    """Run the load test; return 0 if every session succeeded with its own answer, else 1."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860/")
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--n-bits", type=int, default=8)
    parser.add_argument("--train", action="store_true",
                        help="train each session's model with Flower (2 clients, 1 round; trainings queue "
                             "one behind the other) instead of uploading one model")
    parser.add_argument("--workshop", choices=("defaults", "seeds"),
                        help="a classroom: every session trains with the app's defaults (mnist-5k); "
                             "'seeds' gives session k seed k, so every training is a different run")
    parser.add_argument("--classroom", type=int, metavar="N",
                        help="a class as the federation: N participants join, draw, train, decrypt "
                             "(benchmarks/classroom_load.py)")
    parser.add_argument("--drawings", type=int, default=20, help="with --classroom: drawings per participant")
    parser.add_argument("--rounds", type=int, default=5, help="with --classroom: the class run's rounds")
    parser.add_argument("--think", type=float, default=0.0,
                        help="with --classroom: seconds a participant takes to draw a digit (0: none)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--verbose", action="store_true", help="print tracebacks of failed sessions")
    args = parser.parse_args(argv)
    if args.classroom:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from classroom_load import run as run_class

        url = args.url if args.url.endswith("/") else args.url + "/"
        report = run_class(url, args.classroom, args.drawings, args.rounds, args.verbose, args.think)
        print(json.dumps(report, indent=None if args.json else 2))
        return 1 if report["errors"] or report["other_sessions_answers"] else 0
    if args.sessions < 1:
        parser.error("--sessions must be at least 1")
    url = args.url if args.url.endswith("/") else args.url + "/"
    args.url = url

    if args.workshop:
        args.dataset = "mnist-5k"  # the app's default dataset
    dataset = load_dataset(args.dataset)
    with tempfile.TemporaryDirectory(prefix="load-test-") as tmp:
        tmp_path = Path(tmp)
        model_file = None
        model = None
        if not (args.train or args.workshop):
            model = train_centralized(dataset)
            model_file = save_model(model, tmp_path / f"{args.dataset}.skops")
        if args.workshop:
            # Samples a centrally trained model reads with confidence: every session's own
            # federated model will almost surely agree, so a wrong class stands out.
            samples = pick_samples(dataset, train_centralized(dataset), args.sessions, min_confidence=0.9)
        else:
            samples = pick_samples(dataset, model, args.sessions)
        barrier = threading.Barrier(args.sessions)
        wall = time.perf_counter()
        with ThreadPoolExecutor(args.sessions) as pool:
            futures = [pool.submit(run_session, args, k, samples[k], model_file, dataset, barrier, tmp_path)
                       for k in range(args.sessions)]
            results = [f.result() for f in futures]
        wall = time.perf_counter() - wall

    foreign, near_ties = classify_mismatches(results)
    report = {
        "url": url,
        "sessions": args.sessions,
        "mode": f"workshop-{args.workshop}" if args.workshop else "train" if args.train else "upload",
        "dataset": args.dataset,
        "n_bits": args.n_bits,
        "successes": sum(r.ok for r in results),
        "errors": sum(r.error is not None for r in results),
        "wrong_answers": sum(r.error is None and not r.correct for r in results),
        "answers_of_another_session": len(foreign),
        "quantization_near_ties": len(near_ties),
        "wall_seconds": round(wall, 2),
        "latency_seconds": {step: percentiles([r.seconds[step] for r in results if step in r.seconds])
                            for step in STEPS},
        "model_at_seconds": percentiles([r.model_at for r in results if r.model_at is not None]),
        "done_at_seconds": percentiles([r.done_at for r in results if r.done_at is not None]),
        "failures": [{"session": r.session, "step": r.failed_step, "error": r.error}
                     for r in results if r.error],
        "mismatches": [{"session": r.session, "sample_index": r.sample_index, "label": r.label,
                        "encrypted_label": r.encrypted_label, "expected": r.expected,
                        "prediction": r.prediction, "app_clear_prediction": r.app_clear_prediction,
                        "fhe_probabilities": r.fhe_probabilities,
                        "clear_probabilities": r.clear_probabilities}
                       for r in results if r.error is None and not r.correct],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['sessions']} sessions ({report['mode']}, {args.dataset}, n_bits={args.n_bits}) "
              f"against {url} in {report['wall_seconds']:.1f} s")
        print(f"successes {report['successes']}, errors {report['errors']}, wrong answers "
              f"{report['wrong_answers']} (answers of another session "
              f"{report['answers_of_another_session']}, FHE-vs-clear near ties "
              f"{report['quantization_near_ties']})")
        print(f"{'endpoint':<10} {'n':>3} {'p50 s':>8} {'p95 s':>8} {'max s':>8}")
        for step, stats in report["latency_seconds"].items():
            if stats["n"]:
                p50, p95, top = stats["p50"], stats["p95"], stats["max"]
                print(f"{step:<10} {stats['n']:>3} {p50:>8.3f} {p95:>8.3f} {top:>8.3f}")
        for name, key in (("held a trained model", "model_at_seconds"),
                          ("held a decrypted prediction", "done_at_seconds")):
            stats = report[key]
            if stats["n"]:
                print(f"sessions {name} after p50 {stats['p50']:.1f} s, max {stats['max']:.1f} s "
                      "(from the common start)")
        for failure in report["failures"]:
            print(f"session {failure['session']} failed at {failure['step']}: {failure['error']}")
        for mismatch in report["mismatches"]:
            print(f"session {mismatch['session']}: wrong answer {mismatch}")
    # A near tie decided differently by quantization is this session's own answer (the compile tab
    # reports the FHE/clear agreement); an error or another session's answer is a failure.
    ok = report["errors"] == 0 and report["answers_of_another_session"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
