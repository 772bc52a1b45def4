"""Act 4: many test samples through encrypt → server → decrypt, scored against the clear model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhe_model.evaluation import evaluate_encrypted
from fhe_model.http_client import FHEServerError
from fl_training.datasets import load_dataset
from fl_training.validation import whole_number
from story.base import SessionCore
from story.errors import StepError

#: Largest batch of the encrypted evaluation (a few minutes on 2 cores).
MAX_EVALUATION_SAMPLES = 1000


class EvaluationSteps(SessionCore):
    """Tab 4's step: :meth:`evaluate`."""

    def evaluation_limit(self) -> int:
        """The largest ``num_samples`` :meth:`evaluate` accepts for the current model."""
        if self.model is None:
            return MAX_EVALUATION_SAMPLES
        return min(len(load_dataset(self.model.dataset).X_test), MAX_EVALUATION_SAMPLES)

    def evaluate(
        self, num_samples: Any = 50, progress: Callable[[int, int], None] | None = None
    ) -> dict[str, Any]:
        """Run the first ``num_samples`` test samples through encrypt → server → decrypt.

        Parameters
        ----------
        num_samples : int
            Batch size (1 to the test-split size, at most :data:`MAX_EVALUATION_SAMPLES`).
        progress : callable, optional
            ``progress(done, total)`` after each sample.

        Returns
        -------
        dict
            ``accuracy_fhe``, ``accuracy_clear``, ``agreement``, ``samples``,
            ``seconds_per_sample`` (mean latency), ``samples_per_second``,
            ``total_seconds``, ``workers`` and the mean time of each part.

        Raises
        ------
        StepError
            Without keys, or if the server fails.
        """
        num_samples = whole_number("num_samples", num_samples, 1, self.evaluation_limit())
        with self._step("the encrypted evaluation"):
            keys = self._require_keys()
            model = self._require_model()
            dataset = load_dataset(model.dataset)
            X, y = dataset.X_test[:num_samples], dataset.y_test[:num_samples]
            try:
                # Brings back keys the server may have forgotten (TTL, restart) before the batch.
                keys.remote.predict(keys.client.encrypt(X[0]).ciphertext)
                report = evaluate_encrypted(
                    keys.client, lambda ciphertext: keys.remote.predict(ciphertext)[0], X, y,
                    clear_predictions=model.model.predict(X),
                    progress=(lambda done, total, _sample: progress(done, total)) if progress else None,
                    mode="http",
                )
            except FHEServerError as exc:
                raise StepError(f"The FHE server failed during the evaluation: {exc}") from exc
            self.evaluation = report
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
