"""Act 2: the model owner converts and compiles the model into an FHE circuit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhe_model import developer
from fl_training.datasets import load_dataset
from fl_training.validation import SettingError, bound_from_env
from story.base import SessionCore
from story.stages import CompiledStage

#: A sweep's work: samples run through a circuit, ``len(n_bits_values) × (SWEEP_CALIBRATION_SAMPLES
#: + samples)``. The app's sweep (5 values × (300 + 200)) is 2,500 and holds the app's one worker for
#: heavy events for as long as five compiles (README: a compile of mnist takes 0.5 s alone, 2–7 s
#: beside other visitors); the bound is twice that, so that no sweep holds it much longer.
#: ``$FHE_DEMO_MAX_SWEEP_WORK`` replaces it (a local run).
MAX_SWEEP_WORK = 5_000
#: Environment variable: the largest work a sweep may ask for.
MAX_SWEEP_WORK_ENV = "FHE_DEMO_MAX_SWEEP_WORK"


def check_sweep_work(n_values: int, samples: int) -> None:
    """Refuse a sweep whose work is above ``$FHE_DEMO_MAX_SWEEP_WORK`` (default :data:`MAX_SWEEP_WORK`).

    Raises
    ------
    SettingError
        With the sweep's work, the largest allowed, what to lower and how to
        raise the bound for a local run.
    """
    work = n_values * (developer.SWEEP_CALIBRATION_SAMPLES + max(int(samples), 0))
    allowed = bound_from_env(MAX_SWEEP_WORK_ENV, MAX_SWEEP_WORK)
    if work > allowed:
        raise SettingError(
            f"This n_bits sweep is too much work: {n_values} values × "
            f"({developer.SWEEP_CALIBRATION_SAMPLES} calibration + {samples} scored samples) = {work:,} "
            f"samples through a circuit; the largest "
            f"allowed is {allowed:,}. Sweep fewer values or score fewer samples. For a sweep on your own "
            f"machine, raise the bound: start it with the environment variable {MAX_SWEEP_WORK_ENV}={work}."
        )


class CompileSteps(SessionCore):
    """Tab 2's steps: :meth:`compile` and :meth:`n_bits_sweep`."""

    def compile(self, n_bits: Any = developer.DEFAULT_N_BITS, calibration: str = "data") -> dict[str, Any]:
        """Quantize and compile the model, and save this session's deployment.

        Parameters
        ----------
        n_bits : int
            Quantization bits (:data:`fhe_model.developer.N_BITS_MIN` to ``N_BITS_MAX``).
        calibration : {"data", "random"}
            Representative training rows, or random inputs in the public
            feature range (a server that holds no data).

        Returns
        -------
        dict
            ``n_bits``, ``max_bit_width``, ``compile_seconds``, ``accuracy_clear``,
            ``accuracy_quantized``, ``accuracy_fhe_simulated`` and more; ``shared``
            is true when another session had compiled the same model at the same
            settings, and this one uses that circuit and server deployment.

        Raises
        ------
        StepError
            Without a model.
        ValueError
            For invalid settings (from :mod:`fhe_model.developer`).
        """
        # The request's one check; the shared deployment's key needs the checked values.
        n_bits, calibration = developer.check_compile_settings(n_bits, calibration)
        with self._step("compilation"):
            stage = self._require_model()
            lease = self._deployments.acquire(stage.model, load_dataset(stage.dataset), n_bits, calibration)
            self._replace_deployment(CompiledStage(lease))
            return self.compile_summary()

    def compile_summary(self) -> dict[str, Any]:
        """The JSON summary of the current deployment (see :meth:`compile`)."""
        stage = self._require_deployment()
        report = stage.compiled.report
        return {
            "dataset": report.dataset,
            "n_bits": report.n_bits,
            "calibration": report.calibration,
            "max_bit_width": report.max_bit_width,
            "conversion_seconds": round(report.conversion_seconds, 3),
            "compile_seconds": round(report.compile_seconds, 3),
            "accuracy_clear": report.clear_accuracy,
            "accuracy_quantized": report.quantized_accuracy,
            "accuracy_fhe_simulated": report.fhe_simulated_accuracy,
            "fhe_clear_agreement": report.fhe_clear_agreement,
            "evaluation_samples": report.evaluation_samples,
            "range_check_passed": report.range_check_passed,
            "client_zip_bytes": stage.files.client_zip_bytes,
            "server_zip_bytes": stage.files.server_zip_bytes,
            "shared": stage.shared,
        }

    def n_bits_sweep(
        self,
        n_bits_values: tuple[int, ...] = developer.SWEEP_N_BITS,
        calibration: str = "data",
        samples: int = developer.SWEEP_SAMPLES,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Compile the model at several ``n_bits`` and score each on a test subset.

        The session's deployment is not changed. The sweep stops (no further
        compile starts) once the session closes: its page was closed.

        Parameters
        ----------
        n_bits_values : tuple of int
            Bits to try.
        calibration : {"data", "random"}
            As in :meth:`compile`.
        samples : int
            Test samples scored per value (FHE-simulated).
        progress : callable, optional
            ``progress(done, total)`` after each value.

        Returns
        -------
        list of dict
            One row per value: ``n_bits``, ``max_bit_width``, ``compile_seconds``,
            ``accuracy_clear``, ``accuracy_fhe_simulated``.
        """
        check_sweep_work(len(n_bits_values), samples)  # at once, before the step starts
        with self._step("the n_bits sweep"):
            stage = self._require_model()

            def after_value(done: int, total: int) -> None:
                self._stop_if_closed()  # its page closed: no further compile starts
                if progress is not None:
                    progress(done, total)

            reports = developer.n_bits_sweep(
                stage.model, load_dataset(stage.dataset), n_bits_values,
                calibration=calibration, samples=samples, progress=after_value,
            )
            return [
                {
                    "n_bits": report.n_bits,
                    "max_bit_width": report.max_bit_width,
                    "compile_seconds": round(report.compile_seconds, 3),
                    "accuracy_clear": report.clear_accuracy,
                    "accuracy_fhe_simulated": report.fhe_simulated_accuracy,
                }
                for report in reports
            ]
