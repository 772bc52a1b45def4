"""Act 4: many test samples through encrypt → server → decrypt, scored against the clear model."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fhe_model.evaluation import EvaluationStopped, evaluate_encrypted
from fhe_model.http_client import FHEServerError
from fl_training.datasets import load_dataset
from fl_training.preprocessing import model_inputs
from fl_training.validation import SettingError, bound_from_env, whole_number
from story import errors
from story.base import SessionCore
from story.errors import StepError

#: Largest batch of the encrypted evaluation: README measures 8.7 samples/s over HTTP with
#: both cores busy, so 1,000 samples hold the app's one worker for heavy events about 2 minutes.
#: ``$FHE_DEMO_MAX_EVALUATION_SAMPLES`` replaces it (a local run).
MAX_EVALUATION_SAMPLES = 1000
#: Encrypted samples per second on 2 cores (README, ``benchmarks/bench_fhe.py``: 3 in flight over HTTP).
SAMPLES_PER_SECOND = 8.7
#: Environment variable: the largest batch of the encrypted evaluation.
MAX_EVALUATION_SAMPLES_ENV = "FHE_DEMO_MAX_EVALUATION_SAMPLES"


def max_evaluation_samples() -> int:
    """The largest batch: ``$FHE_DEMO_MAX_EVALUATION_SAMPLES`` or :data:`MAX_EVALUATION_SAMPLES`."""
    return bound_from_env(MAX_EVALUATION_SAMPLES_ENV, MAX_EVALUATION_SAMPLES)


@dataclass(frozen=True)
class RunningScore:
    """The encrypted evaluation so far: what a visitor watches while the batch runs.

    Attributes
    ----------
    done, total : int
        Samples decrypted so far, and in the batch.
    encrypted_correct, clear_correct, agreeing : int
        Among those done: decrypted predictions equal to the label, clear
        predictions equal to the label, and decrypted predictions equal to
        the clear ones.
    """

    done: int
    total: int
    encrypted_correct: int
    clear_correct: int
    agreeing: int

    @property
    def encrypted_accuracy(self) -> float:
        return self.encrypted_correct / self.done if self.done else 0.0

    @property
    def clear_accuracy(self) -> float:
        return self.clear_correct / self.done if self.done else 0.0


class EvaluationSteps(SessionCore):
    """Tab 4's step: :meth:`evaluate`."""

    def evaluation_limit(self) -> int:
        """The largest ``num_samples`` :meth:`evaluate` accepts for the current model."""
        if self.model is None:
            return max_evaluation_samples()
        return min(len(load_dataset(self.model.dataset).X_test), max_evaluation_samples())

    def evaluate(
        self,
        num_samples: Any = 50,
        progress: Callable[[int, int], None] | None = None,
        cancel: threading.Event | None = None,
        score: Callable[[RunningScore], None] | None = None,
    ) -> dict[str, Any]:
        """Run the first ``num_samples`` test samples through encrypt → server → decrypt.

        The batch stops (no new sample starts) as soon as the session closes
        (the tab was closed), ``cancel`` is set, or ``progress`` raises (its
        caller has gone): work for a visitor who left does not go on.

        Parameters
        ----------
        num_samples : int
            Batch size (1 to the test-split size, at most :data:`MAX_EVALUATION_SAMPLES`).
        progress : callable, optional
            ``progress(done, total)`` after each sample.
        cancel : threading.Event, optional
            Set it to stop the batch.
        score : callable, optional
            ``score(running)`` after each sample, with the :class:`RunningScore`
            so far (called before ``progress``).

        Returns
        -------
        dict
            ``accuracy_fhe``, ``accuracy_clear``, ``agreement``, ``samples``,
            ``seconds_per_sample`` (mean latency), ``samples_per_second``,
            ``total_seconds``, ``workers`` and the mean time of each part.

        Raises
        ------
        StepError
            Without keys, if the server fails, or when the batch was stopped.
        """
        num_samples = whole_number("num_samples", num_samples, 1, 10**9)
        allowed = max_evaluation_samples()
        if num_samples > allowed:
            raise SettingError(
                f"An encrypted evaluation of {num_samples:,} samples is too much work: the largest batch "
                f"allowed is {allowed:,} (about {allowed / SAMPLES_PER_SECOND / 60:.0f} minutes of both "
                f"cores). Use fewer samples. "
                f"For a run on your own machine, raise the bound: start it with the environment variable "
                f"{MAX_EVALUATION_SAMPLES_ENV}={num_samples}."
            )
        num_samples = whole_number("num_samples", num_samples, 1, self.evaluation_limit())
        with self._step("the encrypted evaluation"):
            keys = self._require_keys()
            model = self._require_model()
            dataset = load_dataset(model.dataset)
            X, y = dataset.X_test[:num_samples], dataset.y_test[:num_samples]
            # The client preprocesses each sample as its deployment records; the clear model alike.
            clear = model.model.predict(model_inputs(model.model, X, dataset))
            counts = {"encrypted": 0, "clear": 0, "agreeing": 0}

            def after_sample(done: int, total: int, sample: Any) -> None:
                counts["encrypted"] += int(sample.prediction == sample.label)
                counts["clear"] += int(sample.clear_prediction == sample.label)
                counts["agreeing"] += int(sample.prediction == sample.clear_prediction)
                if score is not None:
                    score(RunningScore(done, total, counts["encrypted"], counts["clear"], counts["agreeing"]))
                if progress is not None:
                    progress(done, total)

            try:
                # Brings back keys the server may have forgotten (TTL, restart) before the batch.
                keys.remote.predict(keys.client.encrypt(X[0]).ciphertext)
                report = evaluate_encrypted(
                    keys.client, lambda ciphertext: keys.remote.predict(ciphertext)[0], X, y,
                    clear_predictions=clear,
                    progress=after_sample,
                    mode="http",
                    should_stop=lambda: self.closed or (cancel is not None and cancel.is_set()),
                )
            except FHEServerError as exc:
                raise StepError(f"The FHE server failed during the evaluation: {exc}") from exc
            except EvaluationStopped as exc:
                message = errors.SESSION_ENDED if self.closed else f"The evaluation was stopped: {exc}"
                raise StepError(message) from exc
            self.evaluation = report
            return self.evaluation_summary()

    def evaluation_summary(self) -> dict[str, Any]:
        """The last encrypted evaluation with the current keys (see :meth:`evaluate`).

        Raises
        ------
        StepError
            If there is none.
        """
        report = self.evaluation
        if report is None:
            self._require_keys()
            raise StepError("No encrypted evaluation yet: run tab 4 (Encrypted evaluation → Evaluate) first.")
        return {
            "accuracy_fhe": report.encrypted_accuracy,
            "accuracy_clear": report.clear_accuracy,
            "agreement": report.agreement,
            "samples": report.n_samples,
            "seconds_per_sample": round(report.mean_latency_seconds, 4),
            "samples_per_second": round(report.samples_per_second, 3),
            "total_seconds": round(report.total_seconds, 3),
            "workers": report.workers,
            "mean_encrypt_seconds": round(report.mean_encrypt_seconds, 4),
            "mean_server_seconds": round(report.mean_server_seconds, 4),
            "mean_decrypt_seconds": round(report.mean_decrypt_seconds, 4),
        }
