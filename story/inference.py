"""Act 3: the four steps of encrypted inference, and what a wrong key yields.

The session plays the data owner (client role) on the app's host, for the
visitor: it holds the private key in a directory of its own on the host; the
FHE server only ever receives the circuit, evaluation keys and ciphertexts,
through :mod:`fhe_model.connection`. The visitor's browser holds no key.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from fhe_model.client import DecryptionResult, FHEClient, decrypt_with_fresh_keys
from fhe_model.connection import RemoteKeys
from fhe_model.http_client import FHEServerError
from fl_training.datasets import load_dataset
from fl_training.drawings import drawing_to_features
from fl_training.preprocessing import model_inputs, model_preprocessing
from fl_training.validation import one_of, whole_number
from story.base import SessionCore
from story.errors import StepError
from story.stages import CompiledStage, DecryptedStage, EncryptedStage, IntruderStage, KeyStage, ServerStage

#: Inputs of step ②.
INPUT_SOURCES: tuple[str, ...] = ("test sample", "drawing")
#: The wrong-key demo: fresh keys tried on the current output (cheap: ~5 ms each), and
#: test samples over which wrong keys are scored (each one also runs on the server).
WRONG_KEY_TRIES = 50
MAX_WRONG_KEY_TRIES = 500
WRONG_KEY_SAMPLES = 20
MAX_WRONG_KEY_SAMPLES = 200


class InferenceSteps(SessionCore):
    """Tab 3's steps: keys, encryption, the server's run, decryption."""

    def generate_keys(self, reason: str = "requested") -> dict[str, Any]:
        """Step ①: generate fresh keys and send the evaluation keys to the server.

        Parameters
        ----------
        reason : str
            Why: ``"requested"``, or ``"page reloaded"`` when a resumed page
            gets a private key of its own.

        Returns
        -------
        dict
            See :meth:`keys_summary`.

        Raises
        ------
        StepError
            Without a compiled model, or if the server refuses the upload.
        """
        with self._step("key generation"):
            start = time.perf_counter()
            stage = self._require_deployment()
            expected = model_preprocessing(self._require_model().model)
            key_dir = self._new_key_dir()
            try:
                # A deployment that preprocesses otherwise than the session's model is refused here.
                client = FHEClient(stage.files.directory, key_dir, expect_preprocessing=expected)
                setup_seconds = time.perf_counter() - start
                keygen = client.generate_keys()
                try:
                    remote = RemoteKeys(stage.remote, client.evaluation_keys)
                except FHEServerError as exc:
                    raise StepError(f"The FHE server refused this session's upload: {exc}") from exc
            except BaseException:
                shutil.rmtree(key_dir, ignore_errors=True)
                raise
            seconds = time.perf_counter() - start
            self._replace_keys(KeyStage(client, keygen, key_dir, remote, seconds, setup_seconds, reason))
            return self.keys_summary()

    def keys_summary(self) -> dict[str, Any]:
        """The current keys, as step ① reported them.

        Returns
        -------
        dict
            ``private_key_bytes``, ``evaluation_key_bytes``, ``seconds`` (the
            whole step: loading ``client.zip``, key generation, upload),
            ``setup_seconds``, ``keygen_seconds``, ``upload_seconds``,
            ``key_id``, ``deployment_id``, ``reason``.
        """
        keys = self._require_keys()
        return {
            "private_key_bytes": keys.keygen.private_key_bytes,
            "evaluation_key_bytes": keys.keygen.evaluation_key_bytes,
            "seconds": round(keys.seconds, 4),
            "setup_seconds": round(keys.setup_seconds, 4),
            "keygen_seconds": round(keys.keygen.seconds, 4),
            "upload_seconds": round(keys.remote.upload_seconds, 4),
            "key_id": keys.remote.key_id,
            "deployment_id": keys.remote.deployment_id,
            "reason": keys.reason,
        }

    def prepare_drawing(self, drawing: Any) -> np.ndarray:
        """A drawing as the model sees it (nothing is stored).

        Prepared like its dataset's images (cropped, scaled, centred), then
        preprocessed as the model records (e.g. deskewed): exactly what step ②
        quantizes and encrypts.

        Returns
        -------
        ndarray of shape (n_features,)
            The model's input; ``self.dataset.image_shape`` gives its picture.

        Raises
        ------
        StepError
            Without a model.
        DrawingError
            If the dataset is tabular, or the drawing is blank or not an image.
        """
        model = self._require_model()
        dataset = load_dataset(model.dataset)
        return model_inputs(model.model, drawing_to_features(drawing, dataset), dataset)

    @property
    def input_preprocessing(self) -> str | None:
        """What the current model's inputs get (``"none"``, ``"deskew"``); None without a model."""
        return model_preprocessing(self.model.model) if self.model is not None else None

    def sample(self, index: Any) -> tuple[np.ndarray, int]:
        """Return test sample ``index`` of the model's dataset and its label.

        Parameters
        ----------
        index : int
            Position in the test split.

        Returns
        -------
        tuple of (ndarray, int)
            Raw features and true label.
        """
        dataset = load_dataset(self._require_model().dataset)
        index = whole_number("sample_index", index, 0, len(dataset.X_test) - 1)
        return np.asarray(dataset.X_test[index]), int(dataset.y_test[index])

    def encrypt(
        self, source: str = "test sample", sample_index: Any = 0, drawing: Any = None
    ) -> dict[str, Any]:
        """Step ②: quantize and encrypt a test sample or a drawing with the private key.

        Parameters
        ----------
        source : {"test sample", "drawing"}
            What to encrypt.
        sample_index : int
            Test-split position (``source="test sample"``).
        drawing : ndarray or dict, optional
            Sketchpad image (``source="drawing"``).

        Returns
        -------
        dict
            ``ciphertext_bytes``, ``seconds``, ``label`` (None for a drawing),
            ``sample_index``, ``source``, ``ciphertext_preview``, ``quantized_min``/``max``.

        Raises
        ------
        StepError
            Without keys.
        ValueError
            For an invalid sample index or drawing (from the module that owns the rule).
        """
        one_of("source", source, INPUT_SOURCES)
        with self._step("encryption"):
            keys = self._require_keys()
            dataset = load_dataset(self.deployment.compiled.report.dataset)
            if source == "test sample":
                index = whole_number("sample_index", sample_index, 0, len(dataset.X_test) - 1)
                x, label = np.asarray(dataset.X_test[index]), int(dataset.y_test[index])
            else:
                index, label = None, None
                x = drawing_to_features(drawing, dataset)
            encryption = keys.client.encrypt(x)
            self.encrypted = EncryptedStage(x, label, source, index, encryption)
            self._clear_after_encryption()
            return self.encryption_summary()

    def choose_input(self, source: str, sample_index: Any = 0, drawing: Any = None) -> bool:
        """The visitor picked another input: forget a ciphertext of a different one, and all that followed.

        Steps ③ and ④ then refuse until this input is encrypted, and no result of the
        previous input is left to be shown beside the new one. Choosing the input that
        is encrypted (the same test sample, an identical drawing) keeps everything.

        Parameters
        ----------
        source : {"test sample", "drawing"}
            The input now shown.
        sample_index : int
            Its test-split position (``source="test sample"``).
        drawing : ndarray or dict, optional
            The sketchpad's image (``source="drawing"``); None or a blank canvas is no input.

        Returns
        -------
        bool
            True if the ciphertext and what followed were forgotten.

        Raises
        ------
        StepError
            While another step runs (the ciphertext is then kept).
        """
        encrypted = self.encrypted
        if encrypted is None or self._is_encrypted(encrypted, source, sample_index, drawing):
            return False
        with self._step("the change of input"):
            if self.encrypted is not encrypted:  # encrypted again meanwhile: that one is current
                return False
            self.encrypted = None
            self._clear_after_encryption()
            return True

    def _is_encrypted(self, encrypted: EncryptedStage, source: str, sample_index: Any, drawing: Any) -> bool:
        if source != encrypted.source:
            return False
        if source == "test sample":
            try:
                return int(sample_index) == encrypted.sample_index
            except (TypeError, ValueError, OverflowError):
                return False
        try:
            x = drawing_to_features(drawing, load_dataset(self._require_model().dataset))
        except ValueError:  # a blank canvas, no drawing: not the drawing that was encrypted
            return False
        return np.array_equal(x, encrypted.x)

    def encryption_summary(self) -> dict[str, Any]:
        """The current ciphertext, as step ② reported it (see :meth:`encrypt`)."""
        encrypted = self._require_encrypted()
        encryption = encrypted.encryption
        return {
            "source": encrypted.source,
            "sample_index": encrypted.sample_index,
            "label": encrypted.label,
            "ciphertext_bytes": encryption.ciphertext_bytes,
            "seconds": round(encryption.seconds, 4),
            "ciphertext_preview": encryption.ciphertext_preview,
            "quantized_min": int(np.min(encryption.quantized_input)),
            "quantized_max": int(np.max(encryption.quantized_input)),
        }

    @property
    def quantized_input(self) -> np.ndarray | None:
        """The integers that step ② encrypted (what the circuit sees), if any."""
        return self.encrypted.encryption.quantized_input if self.encrypted else None

    def _predict(self, keys: KeyStage, ciphertext: bytes) -> tuple[bytes, bool]:
        try:
            return keys.remote.predict(ciphertext)
        except FHEServerError as exc:
            raise StepError(f"The FHE server could not run the circuit: {exc}") from exc

    def run_on_server(self) -> dict[str, Any]:
        """Step ③: send the ciphertext to the server, which computes on it without decrypting.

        Returns
        -------
        dict
            ``seconds`` (round trip), ``output_ciphertext_bytes``,
            ``input_ciphertext_bytes``, ``evaluation_key_bytes``,
            ``keys_uploaded_again``, ``deployment_id``.

        Raises
        ------
        StepError
            Before encryption, or if the server fails.
        """
        with self._step("FHE execution"):
            encrypted = self._require_encrypted()
            keys = self._require_keys()
            start = time.perf_counter()
            output, retried = self._predict(keys, encrypted.encryption.ciphertext)
            seconds = time.perf_counter() - start
            self._clear_after_encryption()
            self.server_output = ServerStage(output, seconds, retried)
            return self.server_summary()

    def server_summary(self) -> dict[str, Any]:
        """What the server computed, as step ③ reported it (see :meth:`run_on_server`)."""
        output = self._require_server_output()
        keys, encrypted = self._require_keys(), self._require_encrypted()
        return {
            "seconds": round(output.seconds, 4),
            "output_ciphertext_bytes": len(output.ciphertext),
            "input_ciphertext_bytes": encrypted.encryption.ciphertext_bytes,
            "evaluation_key_bytes": keys.keygen.evaluation_key_bytes,
            "keys_uploaded_again": output.retried,
            "deployment_id": keys.deployment_id,
        }

    def decrypt(self) -> dict[str, Any]:
        """Step ④: decrypt the server's output with the private key.

        Returns
        -------
        dict
            ``prediction``, ``clear_prediction``, ``probabilities``, ``seconds``,
            ``label``, ``class_name``, ``matches_clear``.

        Raises
        ------
        StepError
            Before the server ran.
        """
        with self._step("decryption"):
            output = self._require_server_output()
            keys, encrypted, model = self._require_keys(), self._require_encrypted(), self._require_model()
            result = keys.client.decrypt(output.ciphertext)
            # The clear model sees what was encrypted: the raw input after the same preprocessing.
            dataset = load_dataset(model.dataset)
            clear_input = model_inputs(model.model, encrypted.x[None, :], dataset)
            clear_probabilities = model.model.predict_proba(clear_input)[0]
            clear_prediction = int(model.model.classes_[int(np.argmax(clear_probabilities))])
            self.decrypted = DecryptedStage(result, clear_prediction, clear_probabilities)
            return self.decryption_summary()

    def decryption_summary(self) -> dict[str, Any]:
        """The decrypted prediction beside the clear model's, as step ④ reported it (see :meth:`decrypt`)."""
        if self.decrypted is None:
            self._require_server_output()
            raise StepError("Nothing is decrypted yet: run step ④ Decryption first.")
        decrypted, encrypted = self.decrypted, self._require_encrypted()
        result = decrypted.result
        return {
            "prediction": result.prediction,
            "class_name": result.class_name,
            "clear_prediction": decrypted.clear_prediction,
            "matches_clear": result.prediction == decrypted.clear_prediction,
            "label": encrypted.label,
            "probabilities": [float(p) for p in result.probabilities],
            "clear_probabilities": [float(p) for p in decrypted.clear_probabilities],
            "raw_scores": [int(v) for v in result.decrypted_scores],
            "seconds": round(result.seconds, 4),
        }

    def decrypt_with_wrong_key(
        self,
        tries: Any = WRONG_KEY_TRIES,
        samples: Any = WRONG_KEY_SAMPLES,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
        """Decrypt with freshly generated (wrong) keys, as an eavesdropper would.

        Concrete accepts the bytes (they have the right shape), so decryption
        "works": it yields random integers, which the softmax turns into a
        confident-looking probability for an arbitrary class. Two checks show
        that this is noise: ``tries`` wrong keys on the current server output
        point at classes that change from key to key, and over ``samples``
        test samples (each encrypted, computed by the server, and decrypted
        with a new wrong key) the wrong keys are right about as often as a
        blind guess, while the private key is right as often as the model.

        Parameters
        ----------
        tries : int
            Wrong keys tried on the current output (1 to :data:`MAX_WRONG_KEY_TRIES`).
        samples : int
            Test samples of the accuracy check (0 to :data:`MAX_WRONG_KEY_SAMPLES`).
        progress : callable, optional
            ``progress(done, samples)`` after each test sample.

        Returns
        -------
        dict
            ``decrypted`` (Concrete accepted the bytes), ``prediction``,
            ``probabilities`` and ``raw_scores`` (the decrypted integers) of
            the first wrong key; ``real_prediction``, ``real_probabilities`` and
            ``real_raw_scores`` (with the private key); ``tries``,
            ``wrong_predictions`` (one per wrong key on this output), ``samples``,
            ``private_key_right`` and ``wrong_key_right`` (right answers over the
            test samples), ``chance`` (1 / number of classes), ``class_labels``;
            ``error`` if Concrete refused the bytes.

        Raises
        ------
        StepError
            Before the server ran, or if the server fails during the check.
        """
        tries = whole_number("tries", tries, 1, MAX_WRONG_KEY_TRIES)
        samples = whole_number("samples", samples, 0, MAX_WRONG_KEY_SAMPLES)
        with self._step("the wrong-key demo"):
            output = self._require_server_output()
            keys, stage, model = self._require_keys(), self._require_deployment(), self._require_model()
            real = keys.client.decrypt(output.ciphertext)
            labels = [int(c) for c in stage.compiled.info.classes]
            first = self._decrypt_with_fresh_keys(stage, output.ciphertext)
            summary: dict[str, Any] = {
                "decrypted": first.decrypted,
                "prediction": first.prediction,
                "probabilities": _listed(first.probabilities, float),
                "raw_scores": _listed(first.decrypted_scores, int),
                "real_prediction": real.prediction,
                "real_probabilities": _listed(real.probabilities, float),
                "real_raw_scores": _listed(real.decrypted_scores, int),
                "chance": 1 / len(labels),
                "class_labels": labels,
                "error": first.error,
            }
            if first.decrypted:
                wrong = [first.prediction]
                for _ in range(tries - 1):
                    self._stop_if_closed()  # its page closed: no further key is made
                    wrong.append(self._decrypt_with_fresh_keys(stage, output.ciphertext).prediction)
                dataset = load_dataset(model.dataset)
                samples = min(samples, len(dataset.X_test))
                private_right = wrong_right = 0
                for i in range(samples):
                    self._stop_if_closed()
                    ciphertext = keys.client.encrypt(dataset.X_test[i]).ciphertext
                    answer, _retried = self._predict(keys, ciphertext)
                    label = int(dataset.y_test[i])
                    private_right += int(keys.client.decrypt(answer).prediction == label)
                    wrong_right += int(self._decrypt_with_fresh_keys(stage, answer).prediction == label)
                    if progress is not None:
                        progress(i + 1, samples)
                summary.update(tries=len(wrong), wrong_predictions=wrong, samples=samples,
                               private_key_right=private_right, wrong_key_right=wrong_right)
            self.intruder = IntruderStage(summary)
            return summary

    def _decrypt_with_fresh_keys(self, stage: CompiledStage, ciphertext: bytes) -> DecryptionResult:
        intruder_dir = self._new_key_dir(prefix="intruder-")
        try:
            return decrypt_with_fresh_keys(stage.files.directory, intruder_dir, ciphertext)
        finally:
            shutil.rmtree(intruder_dir, ignore_errors=True)

    def wrong_key_summary(self) -> dict[str, Any] | None:
        """The current server output's wrong-key demo, if run (see :meth:`decrypt_with_wrong_key`)."""
        return self.intruder.summary if self.intruder is not None else None


def _listed(values: np.ndarray | None, kind: type) -> list | None:
    return None if values is None else [kind(v) for v in values]
