"""The developer's job: turn a trained scikit-learn model into an FHE deployment.

This is the FHEModelDev role of Concrete ML. It sees the clear model and
(optionally) training data, compiles the circuit, measures what quantization
and FHE cost in accuracy, and writes ``client.zip`` / ``server.zip``. It never
generates or sees a client's keys.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from fhe_model import concrete_modules
from fhe_model.concrete_modules import concrete
from fhe_model.deployment import (
    CLIENT_ZIP,
    MODEL_INFO_ENTRY,
    REPORT_FILE,
    SERVER_ZIP,
    ModelInfo,
    remove_circuit_files,
)
from fl_training.datasets import Dataset
from fl_training.model_io import check_model, check_model_fits
from fl_training.preprocessing import model_inputs, model_preprocessing
from fl_training.validation import OneOf, Whole, check_settings

if TYPE_CHECKING:
    from concrete.ml.sklearn import LogisticRegression as ConcreteLogisticRegression

#: Accepted quantization bits. At 1 bit an MNIST model is barely better than
#: chance; above 16 Concrete finds no crypto parameters for a 784-feature model
#: (the accumulator grows 2 bits per n_bit: 21 bits at n_bits=8, 37 at 16).
N_BITS_MIN, N_BITS_MAX = 2, 16
DEFAULT_N_BITS = 8

#: ``"data"``: a sample of the training set (the usual Concrete ML practice).
#: ``"random"``: uniform draws in the public feature range, for a server that
#: holds no data at all.
CALIBRATION_MODES: tuple[str, ...] = ("data", "random")
DEFAULT_CALIBRATION_SAMPLES = 1000
#: The compile settings a request may choose; the compile form and the command line read them.
COMPILE_CONSTRAINTS = {
    "n_bits": Whole(N_BITS_MIN, N_BITS_MAX, advice=(
        "With fewer bits the model barely beats chance, with more Concrete finds no crypto parameters. "
        f"Pass e.g. n_bits={DEFAULT_N_BITS} (clear-model accuracy on MNIST).")),
    "calibration": OneOf(CALIBRATION_MODES),
}

#: Values :func:`n_bits_sweep` compiles, the test samples it scores per value,
#: and its calibration rows (fewer than a deployment's: a sweep compiles 5 times).
SWEEP_N_BITS: tuple[int, ...] = (2, 3, 4, 6, 8)
SWEEP_SAMPLES = 200
SWEEP_CALIBRATION_SAMPLES = 300


@dataclass(frozen=True)
class CompileReport:
    """What compiling cost and what it did to accuracy.

    Attributes
    ----------
    dataset : str
        Dataset whose test split was scored.
    n_bits : int
        Quantization bits of inputs and weights.
    calibration : str
        ``"data"`` or ``"random"``.
    calibration_samples : int
        Rows used to fix the quantization ranges.
    n_features, n_classes : int
        Model shape.
    conversion_seconds : float
        ``from_sklearn_model`` (quantization) time.
    compile_seconds : float
        Circuit compilation time.
    max_bit_width : int
        Widest encrypted integer in the circuit (its accumulator).
    clear_accuracy : float
        The float scikit-learn model on the scored samples.
    quantized_accuracy : float
        The quantized model run in the clear.
    fhe_simulated_accuracy : float
        The compiled circuit, FHE-simulated.
    fhe_clear_agreement : float
        Fraction of scored samples where the FHE-simulated and the clear model
        predict the same class.
    evaluation_samples : int
        Number of test samples scored.
    range_check_passed : bool
        The circuit gives exact results on the most extreme inputs the
        quantizer can produce (no accumulator overflow for any input).
    """

    dataset: str
    n_bits: int
    calibration: str
    calibration_samples: int
    n_features: int
    n_classes: int
    conversion_seconds: float
    compile_seconds: float
    max_bit_width: int
    clear_accuracy: float
    quantized_accuracy: float
    fhe_simulated_accuracy: float
    fhe_clear_agreement: float
    evaluation_samples: int
    range_check_passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CompiledModel:
    """A compiled model, ready to save or to run directly.

    Attributes
    ----------
    concrete_model : concrete.ml.sklearn.LogisticRegression
        The compiled Concrete ML model (``predict(X, fhe="execute")`` works on it).
    sklearn_model : sklearn.linear_model.LogisticRegression
        The clear model it was built from.
    report : CompileReport
        Timings and accuracies.
    info : ModelInfo
        Public facts written into ``client.zip``.
    """

    concrete_model: ConcreteLogisticRegression
    sklearn_model: LogisticRegression
    report: CompileReport
    info: ModelInfo


@dataclass(frozen=True)
class DeploymentFiles:
    """Where a deployment was written.

    Attributes
    ----------
    directory, client_zip, server_zip, report : Path
        The deployment directory and its files.
    client_zip_bytes, server_zip_bytes : int
        File sizes in bytes.
    """

    directory: Path
    client_zip: Path
    server_zip: Path
    report: Path
    client_zip_bytes: int
    server_zip_bytes: int


def check_compile_settings(n_bits: object = DEFAULT_N_BITS, calibration: object = "data") -> tuple[int, str]:
    """Check a compile request against :data:`COMPILE_CONSTRAINTS`.

    Parameters
    ----------
    n_bits : object
        Whole-number floats such as ``8.0`` (what a UI slider or a JSON API
        sends) are accepted; bools, NaN and strings are not.
    calibration : object
        One of :data:`CALIBRATION_MODES`.

    Returns
    -------
    n_bits, calibration : int, str
        The values in their proper types.

    Raises
    ------
    SettingError
        Naming the setting and its valid values.
    """
    checked = check_settings(COMPILE_CONSTRAINTS, {"n_bits": n_bits, "calibration": calibration})
    return checked["n_bits"], checked["calibration"]


def calibration_inputs(
    dataset: Dataset,
    mode: str = "data",
    n_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """Draw the inputs that fix the quantization ranges.

    Parameters
    ----------
    dataset : Dataset
        Supplies the training split (``"data"``) or the public feature range (``"random"``).
    mode : {"data", "random"}
        ``"data"``: rows sampled from the training split. ``"random"``: rows drawn
        uniformly in ``[feature_low, feature_high]``, no data needed.
    n_samples : int
        Number of rows (capped at the training-set size for ``"data"``).
    seed : int
        Random seed, for reproducible deployments.

    Returns
    -------
    ndarray of shape (n_rows, n_features)
        Raw-feature calibration inputs.

    Raises
    ------
    ValueError
        If ``n_samples`` is invalid (``mode`` is checked with the request, by
        :func:`check_compile_settings`).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"calibration_samples must be a positive integer, got {n_samples!r}.")
    rng = np.random.default_rng(seed)
    if mode == "data":
        n = min(int(n_samples), len(dataset.X_train))
        rows = rng.choice(len(dataset.X_train), size=n, replace=False)
        return np.asarray(dataset.X_train[np.sort(rows)], dtype=np.float64)
    low = np.asarray(dataset.feature_low, dtype=np.float64)
    high = np.asarray(dataset.feature_high, dtype=np.float64)
    return rng.uniform(low, high, size=(int(n_samples), dataset.n_features))


def _prepare_concrete_thread() -> None:
    """Give this thread the thread-local state Concrete's tracer needs.

    Concrete sets attributes of three ``threading.local`` objects at import
    time, so only the importing thread can trace a circuit; any other thread
    (a Gradio worker, a thread pool) fails with ``'_thread._local' object has
    no attribute 'stack'`` (zama-ai/concrete-ml#1044). Setting the import-time
    defaults where missing is harmless in the importing thread.
    """
    # The modules, not the same-named functions concrete.fhe.extensions re-exports.
    tag = concrete_modules.module("concrete.fhe.extensions.tag")
    if not hasattr(tag.tag_context, "stack"):
        tag.tag_context.stack = []
    for name in ("round_bit_pattern", "truncate_bit_pattern"):
        local = concrete_modules.module(f"concrete.fhe.extensions.{name}").local
        if not hasattr(local, "_is_adjusting"):
            local._is_adjusting = False


def _extreme_inputs(model: LogisticRegression, low: float, high: float) -> np.ndarray:
    """Inputs that drive every accumulator of the circuit to its extremes.

    The input quantizer is per tensor and clips, so every input quantizes into
    ``[q(low), q(high)]`` per feature, where low/high are the calibration's
    min/max. A linear score reaches its max/min at the box corner chosen by
    the sign of its weights; the sum-of-inputs term (zero-point correction) at
    the all-low / all-high corners. Compiling with these rows makes the
    circuit's bit width cover *any* input, not only inputs that look like the
    calibration set (a thick hand-drawn digit overflows a data-only circuit).
    """
    coef = np.atleast_2d(model.coef_)
    n = coef.shape[1]
    rows = [np.full(n, low), np.full(n, high)]
    for weights in coef:
        rows.append(np.where(weights > 0, high, low))
        rows.append(np.where(weights > 0, low, high))
    return np.asarray(rows, dtype=np.float64)


#: Free space compiling needs in the temp directory. LLVM writes each circuit's
#: library there (~100 kB) and, when a write fails, aborts the whole process
#: ("LLVM ERROR: IO failure on output stream"): a full disk must be caught before.
MIN_FREE_COMPILE_BYTES = 64 * 1024 * 1024


def check_free_space(directory: str | os.PathLike | None = None) -> None:
    """Refuse to compile when the temp directory is (nearly) full.

    Parameters
    ----------
    directory : path-like, optional
        Where Concrete writes (default: the system temp directory).

    Raises
    ------
    OSError
        ``ENOSPC``, saying how much is free and how much is needed.
    """
    import errno

    directory = Path(directory or tempfile.gettempdir())
    free = shutil.disk_usage(directory).free
    if free < MIN_FREE_COMPILE_BYTES:
        raise OSError(
            errno.ENOSPC,
            f"Only {free / 2**20:.1f} MB free in {directory}; compiling needs "
            f"{MIN_FREE_COMPILE_BYTES / 2**20:.0f} MB there. Nothing was compiled; free some space "
            "and retry.",
        )


def compile_model(
    model: LogisticRegression,
    dataset: Dataset,
    *,
    n_bits: int = DEFAULT_N_BITS,
    calibration: str = "data",
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    evaluation_samples: int | None = None,
    seed: int = 0,
    loop_parallelize: bool = False,
) -> CompiledModel:
    """Quantize and compile a fitted LogisticRegression, and score the result.

    Parameters
    ----------
    model : sklearn.linear_model.LogisticRegression
        Fitted on raw features of ``dataset``.
    dataset : Dataset
        Supplies calibration inputs and the test split that is scored.
    n_bits : int, default=8
        Quantization bits for inputs and weights (``N_BITS_MIN..N_BITS_MAX``).
    calibration : {"data", "random"}, default="data"
        See :func:`calibration_inputs`.
    calibration_samples : int, default=1000
        Calibration rows.
    evaluation_samples : int, optional
        Score only the first N test samples (default: the whole test split).
    seed : int, default=0
        Seed of the calibration draw.
    loop_parallelize : bool, default=False
        Let one circuit run use several threads. Off by default: measured on
        MNIST, it cuts one run by ~10% but its OpenMP threads busy-wait on the
        core a second, concurrent sample needs, so 2-core throughput drops from
        1.7x to 1.5x the sequential rate.

    Returns
    -------
    CompiledModel
        The compiled model with its :class:`CompileReport`.

    Raises
    ------
    ValueError
        On an invalid ``n_bits`` / calibration, a model that does not fit the
        dataset (``ModelFileError``), or a circuit Concrete cannot compile.
    OSError
        If the temp directory is nearly full (:func:`check_free_space`).
    """
    n_bits, calibration = check_compile_settings(n_bits, calibration)
    check_model(model)
    check_model_fits(model, dataset)
    calibration_X = calibration_inputs(dataset, calibration, calibration_samples, seed)
    if calibration == "data":  # random rows are drawn in the range deskewed images keep too
        calibration_X = model_inputs(model, calibration_X, dataset)
    if evaluation_samples is not None and (
        isinstance(evaluation_samples, bool) or int(evaluation_samples) < 1
    ):
        raise ValueError(f"evaluation_samples must be a positive integer, got {evaluation_samples!r}.")

    check_free_space()
    start = time.perf_counter()
    concrete_model = concrete().LogisticRegression.from_sklearn_model(model, calibration_X, n_bits=n_bits)
    conversion_seconds = time.perf_counter() - start

    extremes = _extreme_inputs(model, float(calibration_X.min()), float(calibration_X.max()))
    start = time.perf_counter()
    circuit = _compile_circuit(concrete_model, np.vstack([calibration_X, extremes]), n_bits,
                               dataset.n_features, loop_parallelize)
    compile_seconds = time.perf_counter() - start

    n_eval = len(dataset.X_test) if evaluation_samples is None else min(int(evaluation_samples),
                                                                       len(dataset.X_test))
    report = CompileReport(
        dataset=dataset.name,
        n_bits=n_bits,
        calibration=calibration,
        calibration_samples=len(calibration_X),
        n_features=dataset.n_features,
        n_classes=dataset.n_classes,
        conversion_seconds=conversion_seconds,
        compile_seconds=compile_seconds,
        max_bit_width=int(circuit.graph.maximum_integer_bit_width()),
        **_score(model, concrete_model, model_inputs(model, dataset.X_test[:n_eval], dataset),
                 dataset.y_test[:n_eval], extremes),
    )
    info = ModelInfo(
        dataset=dataset.name,
        n_features=dataset.n_features,
        classes=tuple(int(c) for c in model.classes_),
        class_names=tuple(dataset.class_names) or tuple(str(c) for c in model.classes_),
        n_bits=n_bits,
        image_shape=tuple(dataset.image_shape) if dataset.image_shape else None,
        preprocessing=model_preprocessing(model),
    )
    return CompiledModel(concrete_model=concrete_model, sklearn_model=model, report=report, info=info)


def _compile_circuit(
    concrete_model: ConcreteLogisticRegression, inputs: np.ndarray, n_bits: int, n_features: int,
    loop_parallelize: bool,
) -> Any:
    """Compile the quantized model's FHE circuit over ``inputs`` (calibration rows and extremes)."""
    _prepare_concrete_thread()
    try:
        return concrete_model.compile(
            inputs,
            configuration=concrete().fhe.Configuration(
                loop_parallelize=loop_parallelize,
                # Concrete would otherwise write .artifacts/ into the caller's cwd.
                dump_artifacts_on_unexpected_failures=False,
            ),
        )
    except RuntimeError as exc:
        if "NoParametersFound" in str(exc):
            raise ValueError(
                f"Concrete found no crypto parameters for n_bits={n_bits} with "
                f"{n_features} features (the accumulator is too wide). "
                "Pass a smaller n_bits, e.g. 8."
            ) from exc
        raise


def _score(
    model: LogisticRegression, concrete_model: ConcreteLogisticRegression, X: np.ndarray, y: np.ndarray,
    extremes: np.ndarray,
) -> dict[str, Any]:
    """Accuracy of the clear, quantized and FHE-simulated models, and the range check on the extremes."""
    clear_pred = model.predict(X)
    quantized_pred = concrete_model.predict(X)
    simulated_pred = concrete_model.predict(X, fhe="simulate")
    return {
        "clear_accuracy": float(np.mean(clear_pred == y)),
        "quantized_accuracy": float(np.mean(quantized_pred == y)),
        "fhe_simulated_accuracy": float(np.mean(simulated_pred == y)),
        "fhe_clear_agreement": float(np.mean(simulated_pred == clear_pred)),
        "evaluation_samples": len(y),
        # Every accumulator at its extremes gives the same result simulated as quantized in the clear.
        "range_check_passed": bool(np.array_equal(
            concrete_model.decision_function(extremes),
            concrete_model.decision_function(extremes, fhe="simulate"),
        )),
    }


def remove_compiled_files(compiled: CompiledModel) -> None:
    """Delete the temporary directories Concrete compiled a model into.

    Compiling leaves two (about 100 kB each): the circuit's library and its FHE
    simulator's. Concrete never deletes them, so a long-lived process must.

    Parameters
    ----------
    compiled : CompiledModel
        From :func:`compile_model`; unusable for FHE afterwards (its report and
        a deployment saved from it stay valid).
    """
    circuit = compiled.concrete_model.fhe_circuit
    for server in (circuit.server, circuit.simulator):
        remove_circuit_files(server)


def n_bits_sweep(
    model: LogisticRegression,
    dataset: Dataset,
    n_bits_values: Sequence[int] = SWEEP_N_BITS,
    calibration: str = "data",
    samples: int = SWEEP_SAMPLES,
    progress: Callable[[int, int], None] | None = None,
) -> list[CompileReport]:
    """Compile ``model`` at several ``n_bits`` and score each circuit on a test subset.

    Only the reports are kept: each compiled circuit's files are deleted as
    soon as it has been scored.

    Parameters
    ----------
    model : sklearn.linear_model.LogisticRegression
        Fitted on raw features of ``dataset``.
    dataset : Dataset
        Supplies calibration inputs and the test split that is scored.
    n_bits_values : sequence of int, default=SWEEP_N_BITS
        Bits to try, each in ``N_BITS_MIN..N_BITS_MAX``.
    calibration : {"data", "random"}, default="data"
        See :func:`calibration_inputs`; ``SWEEP_CALIBRATION_SAMPLES`` rows.
    samples : int, default=SWEEP_SAMPLES
        Test samples scored per value (FHE-simulated).
    progress : callable, optional
        Called as ``progress(done, total)`` after each value.

    Returns
    -------
    list of CompileReport
        One per value, in the order of ``n_bits_values``.

    Raises
    ------
    ValueError
        As :func:`compile_model`; invalid values are refused before anything compiles.
    """
    # Every value is checked before anything compiles.
    values = [check_compile_settings(n_bits, calibration)[0] for n_bits in n_bits_values]
    reports = []
    for n_bits in values:
        compiled = compile_model(
            model, dataset, n_bits=n_bits, calibration=calibration,
            calibration_samples=SWEEP_CALIBRATION_SAMPLES, evaluation_samples=samples,
        )
        remove_compiled_files(compiled)
        reports.append(compiled.report)
        if progress is not None:
            progress(len(reports), len(values))
    return reports


def save_deployment(
    compiled: CompiledModel, output_dir: str | os.PathLike, *, overwrite: bool = False
) -> DeploymentFiles:
    """Write ``client.zip``, ``server.zip`` and ``deployment.json`` with FHEModelDev.

    The files are assembled in a staging directory and moved into place, so a
    failure never leaves a half-written deployment.

    Parameters
    ----------
    compiled : CompiledModel
        From :func:`compile_model`.
    output_dir : path-like
        Target directory; must be missing or empty unless ``overwrite``.
    overwrite : bool, default=False
        Replace a previous deployment in ``output_dir``. Refused if the
        directory holds anything else.

    Returns
    -------
    DeploymentFiles
        Paths and sizes.

    Raises
    ------
    FileExistsError
        If ``output_dir`` is not empty and ``overwrite`` is false, or holds
        files that are not part of a deployment.
    """
    FHEModelDev = concrete().FHEModelDev

    out = Path(output_dir)
    ours = {CLIENT_ZIP, SERVER_ZIP, REPORT_FILE}
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory; choose another --output.")
    existing = {p.name for p in out.iterdir()} if out.is_dir() else set()
    if existing and not overwrite:
        raise FileExistsError(
            f"{out} is not empty. Choose a new output directory, or pass overwrite=True "
            "(--overwrite) to replace the deployment in it."
        )
    if existing - ours:
        raise FileExistsError(
            f"Refusing to overwrite {out}: it holds files that are not part of a deployment "
            f"({', '.join(sorted(existing - ours))})."
        )

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-staging-", dir=out.parent))
    try:
        built = staging / "deployment"
        FHEModelDev(str(built), compiled.concrete_model).save()
        with zipfile.ZipFile(built / CLIENT_ZIP, "a") as client_zip:
            client_zip.writestr(MODEL_INFO_ENTRY, compiled.info.to_json())
        (built / REPORT_FILE).write_text(
            json.dumps(compiled.report.to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        for name in existing:
            (out / name).unlink()
        # Renaming onto an empty directory is atomic on POSIX.
        os.replace(built, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    return DeploymentFiles(
        directory=out,
        client_zip=out / CLIENT_ZIP,
        server_zip=out / SERVER_ZIP,
        report=out / REPORT_FILE,
        client_zip_bytes=(out / CLIENT_ZIP).stat().st_size,
        server_zip_bytes=(out / SERVER_ZIP).stat().st_size,
    )
