"""The server role's bounds and refusals: store limits, payload limits, errors.

Each error carries the HTTP status ``fhe_model.http_server`` answers with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhe_model.deployment import DEFAULT_MAX_UNCOMPRESSED_BYTES


class ServerError(Exception):
    """Base of the errors a request can cause; ``status`` is the HTTP status to answer."""

    status = 500


class UnknownDeploymentError(ServerError, LookupError):
    """No deployment has this id (never existed, expired or evicted)."""

    status = 404


class UnknownKeyError(ServerError, LookupError):
    """No evaluation keys have this id (never uploaded, expired or evicted)."""

    status = 404


class MalformedPayloadError(ServerError, ValueError):
    """Bytes that cannot be deserialized as what the endpoint expects."""

    status = 400


class IncompatiblePayloadError(ServerError, ValueError):
    """Well-formed bytes that do not fit the deployment's circuit."""

    status = 422


class PayloadTooLargeError(ServerError, ValueError):
    """More bytes than the deployment's circuit can need."""

    status = 413


class KeyStoreFullError(ServerError):
    """The anonymous key pool is full; nothing was evicted to make room.

    Attributes
    ----------
    retry_after : int
        Seconds until the oldest anonymous keys expire, at the latest.
    """

    status = 503

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class PinnedDeploymentError(ServerError, PermissionError):
    """A deployment loaded from a directory at start cannot be removed over the API."""

    status = 403


@dataclass(frozen=True)
class StoreLimits:
    """Bounds on what clients can make the server keep.

    Attributes
    ----------
    key_ttl_seconds : float
        Evaluation keys uploaded with the admin token, unused for this long, are dropped.
    max_keys : int
        Most key sets uploaded with the admin token; past it, the least
        recently used of those go first.
    anonymous_key_ttl_seconds : float
        Keys uploaded without the token, unused for this long, are dropped.
    max_anonymous_keys : int
        Most key sets uploaded without the token; past it, uploads are
        refused (503) until some expire or are deleted. Nothing is evicted.
    max_key_store_bytes : int
        Cap on the summed size of each pool's keys (same rule as the count).
    deployment_ttl_seconds : float
        Uploaded deployments unused for this long are dropped (deployments
        loaded from a directory at start are kept).
    max_uploaded_deployments : int
        Most uploaded deployments kept.
    max_uncompressed_zip_bytes : int
        Zip-bomb guard for uploaded deployments.
    """

    key_ttl_seconds: float = 3600.0
    max_keys: int = 256
    anonymous_key_ttl_seconds: float = 900.0
    max_anonymous_keys: int = 64
    max_key_store_bytes: int = 256 * 1024 * 1024
    deployment_ttl_seconds: float = 24 * 3600.0
    max_uploaded_deployments: int = 16
    max_uncompressed_zip_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES


#: Serialization overhead allowed on top of Concrete's own size figures:
#: a key set's header (an empty one is 64 bytes), per-key parameters, and a
#: ciphertext's header (1,800 bytes on the wire for 1,536 of payload).
_KEYSET_OVERHEAD_BYTES = 1024
_PER_KEY_OVERHEAD_BYTES = 1024
_CIPHERTEXT_OVERHEAD_BYTES = 4096


@dataclass(frozen=True)
class PayloadLimits:
    """What one deployment's circuit can need, from its compiled program.

    Attributes
    ----------
    max_key_bytes : int
        Its serialized evaluation keys: bootstrap + key-switching keys (0 for
        a linear model, whose keys are a 64-byte header) plus overhead.
    max_ciphertext_bytes : int
        One serialized encrypted input.
    """

    max_key_bytes: int
    max_ciphertext_bytes: int

    @classmethod
    def of(cls, circuit_server: Any, fallback: PayloadLimits | None = None) -> PayloadLimits:
        """Read the limits from a ``concrete.fhe.Server``.

        Parameters
        ----------
        circuit_server : concrete.fhe.Server
            A loaded circuit.
        fallback : PayloadLimits, optional
            Used for any figure Concrete does not report (packing key-switching keys).

        Returns
        -------
        PayloadLimits
            The bounds.
        """
        info = circuit_server.program_info
        keyset = info.get_keyset_info()
        n_keys = len(keyset.bootstrap_keys()) + len(keyset.keyswitch_keys())
        if keyset.packing_keyswitch_keys() and fallback is not None:
            max_key_bytes = fallback.max_key_bytes  # Concrete reports no size for these
        else:
            max_key_bytes = (
                circuit_server.size_of_bootstrap_keys + circuit_server.size_of_keyswitch_keys
                + _KEYSET_OVERHEAD_BYTES + _PER_KEY_OVERHEAD_BYTES * n_keys
            )
        inputs = max(circuit_server.size_of_inputs(name) for name in info.function_list())
        return cls(max_key_bytes, inputs + inputs // 4 + _CIPHERTEXT_OVERHEAD_BYTES)


