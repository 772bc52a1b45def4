"""The client's job: own the private key, encrypt inputs, decrypt results.

This is the FHEModelClient role. The private key is written only into a key
directory the caller owns (created ``0700``, files ``0600``); what leaves this
object is public: evaluation keys and ciphertexts.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fhe_model.concrete_modules import concrete
from fhe_model.deployment import CLIENT_ZIP, check_client_zip, first_line, read_model_info
from fl_training.preprocessing import RAW, preprocess
from fl_training.validation import SettingError

#: Bytes of ciphertext shown in previews. Taken from the middle of the message:
#: its first ~64 bytes are a fixed Cap'n Proto header, the same for every input.
PREVIEW_BYTES = 16


class FHEClientError(RuntimeError):
    """A client-side step failed (wrong deployment, keys missing, undecryptable bytes)."""


@dataclass(frozen=True)
class KeygenResult:
    """Outcome of key generation.

    Attributes
    ----------
    seconds : float
        Wall time.
    reused : bool
        The key directory already held keys for this circuit; they were loaded.
    private_key_bytes : int
        Size of the key directory on disk (the secret key never leaves it).
    evaluation_key_bytes : int
        Size of the serialized evaluation keys, the part sent to the server.
    key_dir : Path
        Where the private key lives.
    """

    seconds: float
    reused: bool
    private_key_bytes: int
    evaluation_key_bytes: int
    key_dir: Path


@dataclass(frozen=True)
class EncryptionResult:
    """One encrypted input.

    Attributes
    ----------
    ciphertext : bytes
        The serialized encrypted input, for the server.
    seconds : float
        Quantize + encrypt + serialize wall time.
    ciphertext_bytes : int
        ``len(ciphertext)``.
    ciphertext_preview : str
        A few bytes of the ciphertext in hex.
    quantized_input : ndarray of int64, shape (n_features,)
        The integers that were encrypted.
    model_input : ndarray of float64, shape (n_features,) or None
        The features that were quantized: the raw features after the deployment's preprocessing.
    """

    ciphertext: bytes = field(repr=False)
    seconds: float
    ciphertext_bytes: int
    ciphertext_preview: str
    quantized_input: np.ndarray = field(repr=False)
    model_input: np.ndarray | None = field(default=None, repr=False)


@dataclass(frozen=True)
class DecryptionResult:
    """One decrypted output.

    Attributes
    ----------
    decrypted : bool
        False if Concrete refused the bytes (see ``error``).
    seconds : float
        Deserialize + decrypt + dequantize wall time.
    ciphertext_bytes : int
        Size of the encrypted output that was decrypted.
    prediction : int or None
        Predicted class label.
    class_name : str or None
        Its human-readable name.
    probabilities : ndarray of shape (n_classes,) or None
        Class probabilities after dequantization and softmax/sigmoid.
    decrypted_scores : ndarray of int64 or None
        The raw integers the server computed (before dequantization).
    error : str or None
        Why decryption failed.
    """

    decrypted: bool
    seconds: float
    ciphertext_bytes: int
    prediction: int | None = None
    class_name: str | None = None
    probabilities: np.ndarray | None = field(default=None, repr=False)
    decrypted_scores: np.ndarray | None = field(default=None, repr=False)
    error: str | None = None


def ciphertext_preview(ciphertext: bytes, n_bytes: int = PREVIEW_BYTES) -> str:
    """Return ``n_bytes`` from the middle of ``ciphertext`` as spaced hex.

    Parameters
    ----------
    ciphertext : bytes
        Serialized ciphertext.
    n_bytes : int
        Bytes to show.

    Returns
    -------
    str
        e.g. ``"a7 1c 74 ... (1,800 bytes)"``.
    """
    start = max(0, len(ciphertext) // 2 - n_bytes // 2)
    return f"{ciphertext[start:start + n_bytes].hex(' ')} … ({len(ciphertext):,} bytes)"


def directory_size(path: str | os.PathLike) -> int:
    """Total size in bytes of the files under ``path``.

    Parameters
    ----------
    path : path-like
        A directory.

    Returns
    -------
    int
        Sum of file sizes.
    """
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _lock_down(key_dir: Path, new_files: set[Path]) -> None:
    """Make new private-key files readable by their owner only (Concrete writes them 0644)."""
    for path in new_files:
        path.chmod(0o600)
        parent = path.parent
        while parent != key_dir and key_dir in parent.parents:
            parent.chmod(0o700)
            parent = parent.parent


class FHEClient:
    """Key generation, encryption and decryption for one deployment.

    Parameters
    ----------
    deployment_dir : path-like
        A directory holding ``client.zip`` (a full deployment directory works).
    key_dir : path-like
        A directory dedicated to the private key; created (``0700``) if missing.
        Keys already in it for the same circuit are reused by
        :meth:`generate_keys`; use an empty directory for fresh keys.
    expect_preprocessing : str, optional
        The preprocessing the caller's model takes (``fl_training.preprocessing.model_preprocessing``):
        a deployment that records another one is refused. Whatever it records, :meth:`encrypt`
        applies it to raw features before quantizing.

    Raises
    ------
    FHEClientError
        If ``client.zip`` is missing, malformed, built with other Concrete versions, or
        records another preprocessing than ``expect_preprocessing``.
    """

    def __init__(
        self, deployment_dir: str | os.PathLike, key_dir: str | os.PathLike, *,
        expect_preprocessing: str | None = None,
    ):
        FHEModelClient = concrete().FHEModelClient

        deployment_dir = Path(deployment_dir)
        client_zip = deployment_dir / CLIENT_ZIP
        if not client_zip.is_file():
            raise FHEClientError(
                f"{deployment_dir} holds no {CLIENT_ZIP}. Pass a deployment directory "
                "(python -m fhe_model compile ...) or use FHEClient.from_client_zip()."
            )
        try:
            check_client_zip(client_zip.read_bytes())
            self.info = read_model_info(client_zip)
        except ValueError as exc:
            raise FHEClientError(str(exc)) from exc
        if expect_preprocessing is not None and self.preprocessing != expect_preprocessing:
            raise FHEClientError(
                f"This deployment's inputs are preprocessed as {self.preprocessing!r}, but the model it is "
                f"used with takes {expect_preprocessing!r}: its predictions would be wrong. Compile the "
                "deployment again from this model (tab 2, or python -m fhe_model compile --model ...)."
            )
        self.key_dir = Path(key_dir)
        if not self.key_dir.exists():
            self.key_dir.mkdir(parents=True, mode=0o700)
        try:
            self._fhe = FHEModelClient(str(deployment_dir), key_dir=str(self.key_dir))
        except ValueError as exc:  # concrete's version check
            raise FHEClientError(
                f"{CLIENT_ZIP} cannot be used with the installed Concrete: {exc}. "
                "Install the versions listed in the error."
            ) from exc
        self._keys_ready = False

    @classmethod
    def from_client_zip(
        cls, client_zip: bytes, key_dir: str | os.PathLike, *, expect_preprocessing: str | None = None
    ) -> FHEClient:
        """Build a client from the bytes of a ``client.zip`` (e.g. downloaded).

        Parameters
        ----------
        client_zip : bytes
            The zip.
        key_dir : path-like
            Directory for the private key.
        expect_preprocessing : str, optional
            As for the constructor.

        Returns
        -------
        FHEClient
            The client; nothing is kept on disk but the key directory.
        """
        with tempfile.TemporaryDirectory(prefix="fhe-client-") as tmp:
            (Path(tmp) / CLIENT_ZIP).write_bytes(client_zip)
            # FHEModelClient reads everything it needs from the zip at load time.
            return cls(tmp, key_dir, expect_preprocessing=expect_preprocessing)

    @property
    def n_features(self) -> int | None:
        """Number of raw features the circuit takes (None for a plain Concrete client.zip)."""
        return self.info.n_features if self.info else None

    @property
    def preprocessing(self) -> str:
        """What :meth:`encrypt` applies to raw features (``"none"`` for a plain Concrete client.zip)."""
        return self.info.preprocessing if self.info else RAW

    def model_inputs(self, X: np.ndarray) -> np.ndarray:
        """Raw features turned into what the circuit takes: the deployment's preprocessing, in the clear."""
        image_shape = self.info.image_shape if self.info else None
        return preprocess(X, self.preprocessing, image_shape)

    def generate_keys(self) -> KeygenResult:
        """Generate the private and evaluation keys, or load them from ``key_dir``.

        Returns
        -------
        KeygenResult
            Timing and sizes.
        """
        before = {p for p in self.key_dir.rglob("*") if p.is_file()}
        start = time.perf_counter()
        self._fhe.generate_private_and_evaluation_keys(force=False)
        evaluation_keys = self._fhe.get_serialized_evaluation_keys()
        seconds = time.perf_counter() - start
        after = {p for p in self.key_dir.rglob("*") if p.is_file()}
        _lock_down(self.key_dir, after - before)
        self._keys_ready = True
        return KeygenResult(
            seconds=seconds,
            reused=bool(before) and after == before,
            private_key_bytes=directory_size(self.key_dir),
            evaluation_key_bytes=len(evaluation_keys),
            key_dir=self.key_dir,
        )

    def _require_keys(self) -> None:
        if not self._keys_ready:
            raise FHEClientError("No keys yet: call generate_keys() first.")

    @property
    def evaluation_keys(self) -> bytes:
        """Serialized evaluation keys: public, sent to the server once per session."""
        self._require_keys()
        return self._fhe.get_serialized_evaluation_keys()

    def encrypt(self, x: np.ndarray) -> EncryptionResult:
        """Quantize, encrypt and serialize one sample.

        Parameters
        ----------
        x : array-like of shape (n_features,) or (1, n_features)
            Raw features, e.g. MNIST pixels in 0..255; the deployment's preprocessing
            (:meth:`model_inputs`, e.g. deskewing) is applied here, before quantizing.

        Returns
        -------
        EncryptionResult
            The ciphertext and what it took.

        Raises
        ------
        SettingError
            If ``x`` is not one finite sample of the right width.
        """
        self._require_keys()
        sample = np.asarray(x, dtype=np.float64)
        if sample.ndim == 1:
            sample = sample[None, :]
        if sample.ndim != 2 or sample.shape[0] != 1:
            raise SettingError(
                f"encrypt() takes one sample, shape (n_features,) or (1, n_features); got {np.shape(x)}."
            )
        if self.n_features is not None and sample.shape[1] != self.n_features:
            raise SettingError(
                f"The model takes {self.n_features} features, this sample has {sample.shape[1]}."
            )
        if not np.all(np.isfinite(sample)):
            raise SettingError("The sample contains NaN or infinity.")
        start = time.perf_counter()
        sample = self.model_inputs(sample)
        ciphertext = self._fhe.quantize_encrypt_serialize(sample)
        seconds = time.perf_counter() - start
        quantized = np.asarray(self._fhe.model.quantize_input(sample))[0]
        return EncryptionResult(
            ciphertext=ciphertext,
            seconds=seconds,
            ciphertext_bytes=len(ciphertext),
            ciphertext_preview=ciphertext_preview(ciphertext),
            quantized_input=quantized,
            model_input=sample[0],
        )

    def decrypt(self, ciphertext: bytes) -> DecryptionResult:
        """Deserialize, decrypt and dequantize one encrypted output.

        Parameters
        ----------
        ciphertext : bytes
            What the server returned for one input.

        Returns
        -------
        DecryptionResult
            Prediction and probabilities.

        Raises
        ------
        FHEClientError
            If the bytes are not an output of this deployment's circuit.
        """
        result = self.attempt_decrypt(ciphertext)
        if not result.decrypted:
            raise FHEClientError(result.error)
        return result

    def attempt_decrypt(self, ciphertext: bytes) -> DecryptionResult:
        """Like :meth:`decrypt`, but report a failure in the result instead of raising.

        With the wrong private key, decryption "succeeds" and yields meaningless
        numbers; Concrete only refuses bytes of the wrong shape or type. This
        method never raises for either case, for teaching demos.

        Parameters
        ----------
        ciphertext : bytes
            An encrypted output, possibly someone else's.

        Returns
        -------
        DecryptionResult
            ``decrypted`` is False and ``error`` set if Concrete refused the bytes.
        """
        self._require_keys()
        start = time.perf_counter()
        try:
            probabilities = np.asarray(self._fhe.deserialize_decrypt_dequantize(ciphertext))
            seconds = time.perf_counter() - start
            # Decrypted once more without dequantizing, to show the raw integers
            # the server computed; ~1 ms, not counted in ``seconds``.
            scores = np.asarray(self._fhe.deserialize_decrypt(ciphertext))
        except (RuntimeError, ValueError, TypeError, AssertionError) as exc:
            return DecryptionResult(
                decrypted=False,
                seconds=time.perf_counter() - start,
                ciphertext_bytes=len(ciphertext),
                error=f"Concrete refused to decrypt these bytes: {first_line(exc)}",
            )
        probabilities = probabilities.reshape(-1)
        index = int(np.argmax(probabilities))
        if self.info and index < len(self.info.classes):
            label, name = self.info.classes[index], self.info.class_names[index]
        else:
            label, name = index, str(index)
        return DecryptionResult(
            decrypted=True,
            seconds=seconds,
            ciphertext_bytes=len(ciphertext),
            prediction=int(label),
            class_name=name,
            probabilities=probabilities,
            decrypted_scores=scores.reshape(-1),
        )


def decrypt_with_fresh_keys(
    deployment_dir: str | os.PathLike, key_dir: str | os.PathLike, ciphertext: bytes
) -> DecryptionResult:
    """Show what an eavesdropper gets: decrypt someone's output with newly generated keys.

    Parameters
    ----------
    deployment_dir : path-like
        The same deployment the real client uses (so the bytes have the right shape).
    key_dir : path-like
        An empty or missing directory for the intruder's keys.
    ciphertext : bytes
        An encrypted output produced for another client.

    Returns
    -------
    DecryptionResult
        Usually ``decrypted=True`` with a meaningless prediction.

    Raises
    ------
    ValueError
        If ``key_dir`` already holds files (its keys might be the victim's).
    """
    key_dir = Path(key_dir)
    if key_dir.exists() and any(key_dir.iterdir()):
        raise ValueError(
            f"{key_dir} is not empty: pass an empty directory so that fresh keys are generated."
        )
    intruder = FHEClient(deployment_dir, key_dir)
    intruder.generate_keys()
    return intruder.attempt_decrypt(ciphertext)
