"""Act 3: the four steps of encrypted inference, and what a wrong key yields.

The session plays the data owner (client role): it holds the private key in
a directory of its own; the FHE server only ever receives the circuit,
evaluation keys and ciphertexts, through :mod:`fhe_model.connection`.
"""

from __future__ import annotations

import shutil
import time
from typing import Any

import numpy as np

from fhe_model.client import FHEClient, decrypt_with_fresh_keys
from fhe_model.connection import RemoteKeys
from fhe_model.http_client import FHEServerError
from fl_training.datasets import load_dataset
from fl_training.drawings import drawing_to_features
from fl_training.validation import one_of, whole_number
from story.base import SessionCore
from story.errors import StepError
from story.stages import DecryptedStage, EncryptedStage, KeyStage, ServerStage

#: Inputs of step ②.
INPUT_SOURCES: tuple[str, ...] = ("test sample", "drawing")


class InferenceSteps(SessionCore):
    """Tab 3's steps: keys, encryption, the server's run, decryption."""

    def generate_keys(self) -> dict[str, Any]:
        """Step ①: generate fresh keys and send the evaluation keys to the server.

        Returns
        -------
        dict
            ``private_key_bytes``, ``evaluation_key_bytes``, ``seconds``,
            ``upload_seconds``, ``key_id``, ``deployment_id``.

        Raises
        ------
        StepError
            Without a compiled model, or if the server refuses the upload.
        """
        with self._step("key generation"):
            stage = self._require_deployment()
            key_dir = self._new_key_dir()
            try:
                client = FHEClient(stage.files.directory, key_dir)
                keygen = client.generate_keys()
                try:
                    remote = RemoteKeys(stage.remote, client.evaluation_keys)
                except FHEServerError as exc:
                    raise StepError(f"The FHE server refused this session's upload: {exc}") from exc
            except BaseException:
                shutil.rmtree(key_dir, ignore_errors=True)
                raise
            self._replace_keys(KeyStage(client, keygen, key_dir, remote))
            return {
                "private_key_bytes": keygen.private_key_bytes,
                "evaluation_key_bytes": keygen.evaluation_key_bytes,
                "seconds": round(keygen.seconds, 4),
                "upload_seconds": round(remote.upload_seconds, 4),
                "key_id": remote.key_id,
                "deployment_id": remote.deployment_id,
            }

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
            return {
                "source": source,
                "sample_index": index,
                "label": label,
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
            self.server_output = ServerStage(output, seconds, retried)
            self.decrypted = None
            return {
                "seconds": round(seconds, 4),
                "output_ciphertext_bytes": len(output),
                "input_ciphertext_bytes": encrypted.encryption.ciphertext_bytes,
                "evaluation_key_bytes": keys.keygen.evaluation_key_bytes,
                "keys_uploaded_again": retried,
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
            clear_probabilities = model.model.predict_proba(encrypted.x[None, :])[0]
            clear_prediction = int(model.model.classes_[int(np.argmax(clear_probabilities))])
            self.decrypted = DecryptedStage(result, clear_prediction, clear_probabilities)
            return {
                "prediction": result.prediction,
                "class_name": result.class_name,
                "clear_prediction": clear_prediction,
                "matches_clear": result.prediction == clear_prediction,
                "label": encrypted.label,
                "probabilities": [float(p) for p in result.probabilities],
                "clear_probabilities": [float(p) for p in clear_probabilities],
                "seconds": round(result.seconds, 4),
            }

    def decrypt_with_wrong_key(self) -> dict[str, Any]:
        """Decrypt the server's output with freshly generated keys, as an eavesdropper would.

        Returns
        -------
        dict
            ``decrypted`` (Concrete accepted the bytes), ``prediction`` and
            ``probabilities`` (meaningless), ``raw_scores``, ``error`` if it refused.
        """
        with self._step("the wrong-key demo"):
            output = self._require_server_output()
            stage = self._require_deployment()
            intruder_dir = self._new_key_dir(prefix="intruder-")
            try:
                result = decrypt_with_fresh_keys(stage.files.directory, intruder_dir, output.ciphertext)
            finally:
                shutil.rmtree(intruder_dir, ignore_errors=True)
            return {
                "decrypted": result.decrypted,
                "prediction": result.prediction,
                "probabilities": None if result.probabilities is None
                else [float(p) for p in result.probabilities],
                "raw_scores": None if result.decrypted_scores is None
                else [int(s) for s in result.decrypted_scores],
                "error": result.error,
            }
