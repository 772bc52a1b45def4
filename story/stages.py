"""What a session has built, one record per step of the story.

Each step stores its record only once it fully succeeded, so a failed step
leaves the session as it was. Records of later steps are dropped whenever an
earlier one is replaced (see :class:`story.base.SessionCore`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

    from fhe_model.client import DecryptionResult, EncryptionResult, FHEClient, KeygenResult
    from fhe_model.connection import RemoteDeployment, RemoteKeys
    from fhe_model.developer import CompiledModel, DeploymentFiles
    from story.shared_deployments import Lease


@dataclass(frozen=True)
class Baseline:
    """Test accuracy of the centrally trained model (None if it could not be trained)."""

    accuracy: float | None


@dataclass
class ModelStage:
    """A model ready to compile: trained here, or uploaded."""

    model: LogisticRegression
    dataset: str
    source: str  # "federated" or "uploaded"
    summary: dict[str, Any]
    model_file: Path


@dataclass
class CompiledStage:
    """A compiled model, its deployment files (public: no key material) and its copy on the server.

    All three may be shared with other sessions that compiled the same model
    at the same settings; ``lease`` gives them back. ``resumed`` marks the
    deployment a reloaded page took over from its previous session.
    """

    lease: Lease
    resumed: bool = False

    @property
    def compiled(self) -> CompiledModel:
        return self.lease.compiled

    @property
    def files(self) -> DeploymentFiles:
        return self.lease.files

    @property
    def remote(self) -> RemoteDeployment:
        return self.lease.remote

    @property
    def shared(self) -> bool:
        """Another participant compiled it first (this visitor's own reloaded page does not count)."""
        return self.lease.shared and not self.resumed


@dataclass
class KeyStage:
    """This session's keys: the private key stays in ``key_dir``, the server has ``remote``'s key id.

    ``seconds`` is the whole step as the visitor waits for it: loading
    ``client.zip``, generating the keys and uploading the evaluation keys.
    """

    client: FHEClient
    keygen: KeygenResult
    key_dir: Path
    remote: RemoteKeys
    seconds: float = 0.0
    setup_seconds: float = 0.0
    reason: str = "requested"  # or "page reloaded"

    @property
    def key_id(self) -> str:
        return self.remote.key_id

    @property
    def deployment_id(self) -> str:
        return self.remote.deployment_id


@dataclass
class EncryptedStage:
    """The sample that was encrypted, and its ciphertext."""

    x: np.ndarray
    label: int | None
    source: str
    sample_index: int | None
    encryption: EncryptionResult


@dataclass
class ServerStage:
    """What the server sent back."""

    ciphertext: bytes = field(repr=False)
    seconds: float = 0.0
    retried: bool = False


@dataclass(frozen=True)
class IntruderStage:
    """What fresh (wrong) keys made of the server's output, beside what the private key makes of it.

    Attributes
    ----------
    summary : dict
        As :meth:`story.inference.InferenceSteps.decrypt_with_wrong_key` returns it.
    """

    summary: dict[str, Any]


@dataclass
class DecryptedStage:
    """The decrypted result beside the clear model's."""

    result: DecryptionResult
    clear_prediction: int
    clear_probabilities: np.ndarray


@dataclass(frozen=True)
class Progress:
    """Which steps a session has done, and what its model is: what a status line shows."""

    model: bool = False
    compiled: bool = False
    keys: bool = False
    encrypted: bool = False
    server_ran: bool = False
    decrypted: bool = False
    model_source: str | None = None
    dataset: str | None = None
    accuracy: float | None = None
    n_bits: int | None = None
    #: Grows whenever any record of the session is stored or dropped: two
    #: progress reports with the same revision describe the same session state.
    revision: int = 0

    def steps(self) -> list[tuple[str, bool]]:
        """``(name, done)`` for each step, in the order of the story."""
        return [
            ("model", self.model), ("compiled", self.compiled), ("keys", self.keys),
            ("encrypted", self.encrypted), ("server ran", self.server_ran), ("decrypted", self.decrypted),
        ]
