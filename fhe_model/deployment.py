"""The deployment file format shared by the developer, the client and the server.

A deployment is the directory :class:`concrete.ml.deployment.FHEModelDev` writes:
``client.zip`` (crypto specs and quantizers, public) and ``server.zip`` (the
circuit). We add two things that any Concrete ML 1.9 client ignores:

* ``fhe_model.json`` inside ``client.zip``: public facts about the model
  (dataset, classes, feature count) so a client that only downloaded
  ``client.zip`` can label predictions;
* ``deployment.json`` next to the zips: the developer's compile report.

This module only reads and checks bytes. It never touches keys, so the server
can import it without gaining a path to a private key.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fl_training.preprocessing import RAW, PreprocessingError, check_applies

#: Environment variable holding the token that authorizes deployment uploads
#: (read by the server, and by a client that uploads to a server it did not start).
ADMIN_TOKEN_ENV = "FHE_ADMIN_TOKEN"

CLIENT_ZIP = "client.zip"
SERVER_ZIP = "server.zip"
MODEL_INFO_ENTRY = "fhe_model.json"
REPORT_FILE = "deployment.json"

#: Entries of a ``client.zip``: the first set is what Concrete ML writes, the
#: second what we add.
CLIENT_ZIP_REQUIRED = frozenset({"client.specs.json", "serialized_processing.json", "versions.json"})
CLIENT_ZIP_OPTIONAL = frozenset({MODEL_INFO_ENTRY})

#: Entries of a ``server.zip`` saved ``via_mlir`` (portable MLIR, compiled on
#: load). A server.zip holding a prebuilt shared library is refused: loading
#: it would run native code from the upload.
SERVER_ZIP_REQUIRED = frozenset(
    {"circuit.mlir", "is_simulated", "configuration.json", "client.specs.json", "versions.json"}
)
SERVER_ZIP_OPTIONAL = frozenset({"composition_rules.json"})

#: Uploads may be a plain server.zip or this two-entry bundle, so that a
#: deployment added over HTTP can also serve its client.zip.
BUNDLE_ENTRIES = frozenset({SERVER_ZIP, CLIENT_ZIP})

#: Default cap on the uncompressed size of a zip we read (zip-bomb guard). Real
#: deployments are a few kB (MLIR of a 784x10 linear model: ~40 kB).
DEFAULT_MAX_UNCOMPRESSED_BYTES = 64 * 1024 * 1024

#: ``configuration.json`` is read by Concrete with jsonpickle, which builds any
#: Python object it names and follows attribute chains from a module path
#: (``concrete.fhe.compilation.configuration.platform.os.system`` is a valid
#: name to it). So the file is parsed here as plain JSON and may only name
#: these exact classes: the enums of Concrete's configuration, called with one
#: plain value (``py/reduce``), and its one dataclass (``py/object``).
_CONFIGURATION_MODULE = "concrete.fhe.compilation.configuration"
CONFIGURATION_ENUMS = frozenset(
    f"{_CONFIGURATION_MODULE}.{name}"
    for name in (
        "SecurityLevel", "ParameterSelectionStrategy", "MultiParameterStrategy", "Exactness",
        "ComparisonStrategy", "BitwiseStrategy", "MultivariateStrategy", "MinMaxStrategy",
    )
)
CONFIGURATION_OBJECTS = frozenset({f"{_CONFIGURATION_MODULE}.ApproximateRoundingConfig"})
#: Settings that make Concrete write files or keys to disk on the server; an
#: upload must leave them off.
_CONFIGURATION_PINNED = {
    "enable_unsafe_features": False,
    "use_insecure_key_cache": False,
    "insecure_key_cache_location": None,
    "dump_artifacts_on_unexpected_failures": False,
}
_SCALARS = (str, int, float, bool, type(None))


class DeploymentFormatError(ValueError):
    """Bytes or a directory that are not a usable Concrete ML deployment."""


def first_line(exc: BaseException) -> str:
    """Return the first line of an exception's message, for a message shown to a user.

    Concrete appends C++ stack dumps to its errors; both the client and the
    server role quote only the first line.

    Parameters
    ----------
    exc : BaseException
        The error.

    Returns
    -------
    str
        Its first non-empty line, or the exception's class name if it has no message.
    """
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass(frozen=True)
class ModelInfo:
    """Public facts about a deployed model, stored in ``client.zip``.

    Attributes
    ----------
    dataset : str
        Name of the dataset the model was compiled for (``fl_training.datasets``).
    n_features : int
        Number of raw input features.
    classes : tuple of int
        Class labels, in the order of the model's output scores.
    class_names : tuple of str
        Human-readable class names.
    n_bits : int
        Quantization bits of inputs and weights.
    image_shape : tuple of int or None
        ``(height, width)`` for image datasets.
    preprocessing : str
        What the data owner applies to raw features before quantizing
        (:mod:`fl_training.preprocessing`); ``"none"`` in a ``client.zip`` older than the record.
    """

    dataset: str
    n_features: int
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    n_bits: int
    image_shape: tuple[int, int] | None = None
    preprocessing: str = RAW

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelInfo:
        try:
            raw = json.loads(text)
            info = cls(
                dataset=str(raw["dataset"]),
                n_features=int(raw["n_features"]),
                classes=tuple(int(c) for c in raw["classes"]),
                class_names=tuple(str(c) for c in raw["class_names"]),
                n_bits=int(raw["n_bits"]),
                image_shape=tuple(raw["image_shape"]) if raw.get("image_shape") else None,
                preprocessing=raw.get("preprocessing", RAW),
            )
            check_applies(info.preprocessing, info.image_shape)
            return info
        except PreprocessingError as exc:
            raise DeploymentFormatError(f"{MODEL_INFO_ENTRY}: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise DeploymentFormatError(f"{MODEL_INFO_ENTRY} is not valid: {exc}") from exc


def read_zip_entries(
    data: bytes,
    *,
    what: str,
    required: frozenset[str],
    optional: frozenset[str] = frozenset(),
    max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES,
) -> dict[str, bytes]:
    """Read a small, flat zip into memory after checking its entry names and sizes.

    Parameters
    ----------
    data : bytes
        The zip file.
    what : str
        Name used in error messages, e.g. ``"server.zip"``.
    required, optional : frozenset of str
        Entry names that must / may appear. Anything else is refused.
    max_uncompressed_bytes : int
        Upper bound on the sum of declared and actual entry sizes.

    Returns
    -------
    dict of str to bytes
        Entry name to content.

    Raises
    ------
    DeploymentFormatError
        If ``data`` is not a zip, has unexpected or missing entries, or is too big.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise DeploymentFormatError(f"{what} is not a zip file ({exc}).") from exc
    with archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        if len(set(names)) != len(names):
            raise DeploymentFormatError(f"{what} contains duplicate entries.")
        unexpected = sorted(set(names) - required - optional)
        if unexpected:
            raise DeploymentFormatError(
                f"{what} contains unexpected entries {unexpected}; expected only "
                f"{sorted(required | optional)} (a Concrete ML deployment saved with via_mlir=True)."
            )
        missing = sorted(required - set(names))
        if missing:
            raise DeploymentFormatError(f"{what} lacks {missing}: it is not a Concrete ML {what}.")
        if sum(info.file_size for info in infos) > max_uncompressed_bytes:
            raise DeploymentFormatError(
                f"{what} unpacks to more than {max_uncompressed_bytes} bytes."
            )
        entries: dict[str, bytes] = {}
        total = 0
        for info in infos:
            # Read at most the declared size + 1 so a lying header cannot
            # make us inflate more than the cap.
            with archive.open(info) as fh:
                content = fh.read(info.file_size + 1)
            total += len(content)
            if len(content) != info.file_size or total > max_uncompressed_bytes:
                raise DeploymentFormatError(f"{what}: entry {info.filename} has a wrong size.")
            entries[info.filename] = content
    return entries


def check_configuration_json(text: bytes) -> None:
    """Refuse a ``configuration.json`` naming anything but Concrete's own configuration types.

    The file is parsed as plain JSON (jsonpickle never sees a refused file).
    Accepted: JSON values; ``{"py/reduce": [{"py/type": E}, {"py/tuple": [v]}]}``
    for an enum ``E`` of :data:`CONFIGURATION_ENUMS` and one plain value ``v``;
    ``{"py/object": C, ...plain fields}`` for ``C`` in :data:`CONFIGURATION_OBJECTS`;
    ``{"py/tuple": [plain values]}``. Names are compared exactly, never by prefix.

    Parameters
    ----------
    text : bytes
        The entry from a ``server.zip``.

    Raises
    ------
    DeploymentFormatError
        If it is not a JSON object of that shape, or turns on a setting that
        writes files on the server.
    """

    def refuse(why: str) -> DeploymentFormatError:
        return DeploymentFormatError(
            f"server.zip: configuration.json {why}; it is not a Concrete configuration."
        )

    def plain(node: Any) -> bool:
        return isinstance(node, _SCALARS) or (
            isinstance(node, list) and all(isinstance(item, _SCALARS) for item in node)
        )

    def check(node: Any, depth: int) -> None:
        if depth > 4:
            raise refuse("nests deeper than a configuration does")
        if isinstance(node, _SCALARS):
            return
        if isinstance(node, list):
            for item in node:
                check(item, depth + 1)
            return
        if not isinstance(node, dict):  # pragma: no cover - json.loads makes nothing else
            raise refuse(f"holds a {type(node).__name__}")
        tags = sorted(key for key in node if key.startswith("py/"))
        if not tags:
            for value in node.values():
                check(value, depth + 1)
        elif tags == ["py/reduce"] and len(node) == 1:
            call = node["py/reduce"]
            if not (
                isinstance(call, list) and len(call) == 2
                and isinstance(call[0], dict) and list(call[0]) == ["py/type"]
                and isinstance(call[1], dict) and list(call[1]) == ["py/tuple"]
                and isinstance(call[1]["py/tuple"], list) and len(call[1]["py/tuple"]) == 1
                and isinstance(call[1]["py/tuple"][0], _SCALARS)
            ):
                raise refuse("has a py/reduce other than an enum built from one value")
            if call[0]["py/type"] not in CONFIGURATION_ENUMS:
                raise refuse(f"names {call[0]['py/type']!r}, not one of Concrete's configuration enums")
        elif tags == ["py/object"]:
            if node["py/object"] not in CONFIGURATION_OBJECTS:
                raise refuse(f"names {node['py/object']!r}, not one of Concrete's configuration types")
            if not all(plain(value) for key, value in node.items() if key != "py/object"):
                raise refuse(f"gives {node['py/object']} fields that are not plain values")
        elif tags == ["py/tuple"] and len(node) == 1:
            if not plain(node["py/tuple"]):
                raise refuse("has a py/tuple of something other than plain values")
        else:
            raise refuse(f"uses the jsonpickle tags {tags}")

    try:
        tree = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise DeploymentFormatError(f"server.zip: configuration.json is not JSON ({exc}).") from exc
    if not isinstance(tree, dict):
        raise refuse("is not a JSON object")
    check(tree, 0)
    for key, safe in _CONFIGURATION_PINNED.items():
        if tree.get(key, safe) != safe:
            raise DeploymentFormatError(
                f"server.zip: configuration.json sets {key} to {tree[key]!r}; uploads must leave it "
                f"at {json.dumps(safe)} (no unsafe features, debug dumps or key caches on the server)."
            )


def check_server_zip(
    data: bytes, max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES
) -> dict[str, bytes]:
    """Check that ``data`` is a portable (MLIR) Concrete ML ``server.zip``.

    Parameters
    ----------
    data : bytes
        The zip.
    max_uncompressed_bytes : int
        Zip-bomb guard.

    Returns
    -------
    dict of str to bytes
        Its entries.

    Raises
    ------
    DeploymentFormatError
        If it is not one.
    """
    entries = read_zip_entries(
        data,
        what=SERVER_ZIP,
        required=SERVER_ZIP_REQUIRED,
        optional=SERVER_ZIP_OPTIONAL,
        max_uncompressed_bytes=max_uncompressed_bytes,
    )
    if entries["is_simulated"].strip() != b"0":
        raise DeploymentFormatError("server.zip holds a simulation circuit; compile for execution.")
    check_configuration_json(entries["configuration.json"])
    return entries


def check_client_zip(
    data: bytes, max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES
) -> dict[str, bytes]:
    """Check that ``data`` is a Concrete ML ``client.zip``.

    Parameters
    ----------
    data : bytes
        The zip.
    max_uncompressed_bytes : int
        Zip-bomb guard.

    Returns
    -------
    dict of str to bytes
        Its entries.

    Raises
    ------
    DeploymentFormatError
        If it is not one.
    """
    entries = read_zip_entries(
        data,
        what=CLIENT_ZIP,
        required=CLIENT_ZIP_REQUIRED,
        optional=CLIENT_ZIP_OPTIONAL,
        max_uncompressed_bytes=max_uncompressed_bytes,
    )
    if MODEL_INFO_ENTRY in entries:
        ModelInfo.from_json(entries[MODEL_INFO_ENTRY])
    return entries


def read_model_info(client_zip: bytes | str | os.PathLike) -> ModelInfo | None:
    """Return the :class:`ModelInfo` stored in a ``client.zip``, if any.

    Parameters
    ----------
    client_zip : bytes or path-like
        The zip's bytes or its path.

    Returns
    -------
    ModelInfo or None
        ``None`` for a client.zip written by plain Concrete ML.
    """
    data = client_zip if isinstance(client_zip, bytes) else Path(client_zip).read_bytes()
    entries = check_client_zip(data)
    raw = entries.get(MODEL_INFO_ENTRY)
    return ModelInfo.from_json(raw) if raw is not None else None


def make_bundle(server_zip: bytes, client_zip: bytes) -> bytes:
    """Pack a server.zip and its client.zip into one upload.

    Parameters
    ----------
    server_zip, client_zip : bytes
        The two files of a deployment.

    Returns
    -------
    bytes
        A zip with entries ``server.zip`` and ``client.zip``.
    """
    buffer = io.BytesIO()
    # Stored, not deflated: the inner zips are already compressed.
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as bundle:
        bundle.writestr(SERVER_ZIP, server_zip)
        bundle.writestr(CLIENT_ZIP, client_zip)
    return buffer.getvalue()


def split_upload(
    data: bytes, max_uncompressed_bytes: int = DEFAULT_MAX_UNCOMPRESSED_BYTES
) -> tuple[bytes, bytes | None]:
    """Split an uploaded deployment into ``(server_zip, client_zip or None)``.

    Parameters
    ----------
    data : bytes
        Either a server.zip or a bundle from :func:`make_bundle`.
    max_uncompressed_bytes : int
        Zip-bomb guard, applied to the bundle and to each inner zip.

    Returns
    -------
    tuple of (bytes, bytes or None)
        The checked server.zip and, for a bundle, the checked client.zip.

    Raises
    ------
    DeploymentFormatError
        If the upload is neither, or if the client.zip was not built with the server.zip.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, ValueError) as exc:
        raise DeploymentFormatError(
            f"The upload is not a zip file ({exc}). Send the bytes of server.zip."
        ) from exc
    if names != BUNDLE_ENTRIES:
        check_server_zip(data, max_uncompressed_bytes)
        return data, None
    entries = read_zip_entries(
        data, what="deployment bundle", required=BUNDLE_ENTRIES,
        max_uncompressed_bytes=max_uncompressed_bytes,
    )
    server_entries = check_server_zip(entries[SERVER_ZIP], max_uncompressed_bytes)
    client_entries = check_client_zip(entries[CLIENT_ZIP], max_uncompressed_bytes)
    if server_entries["client.specs.json"] != client_entries["client.specs.json"]:
        raise DeploymentFormatError(
            "The bundle's client.zip was not built with its server.zip (their crypto specs "
            "differ). Upload the two files FHEModelDev saved together."
        )
    return entries[SERVER_ZIP], entries[CLIENT_ZIP]


def deployment_paths(directory: str | os.PathLike) -> tuple[Path, Path]:
    """Return ``(client.zip, server.zip)`` of a deployment directory, checking they exist.

    Parameters
    ----------
    directory : path-like
        A directory written by :func:`fhe_model.developer.save_deployment` or FHEModelDev.

    Returns
    -------
    tuple of Path
        The two zip paths.

    Raises
    ------
    DeploymentFormatError
        If the directory or one of the zips is missing.
    """
    directory = Path(directory)
    client_zip, server_zip = directory / CLIENT_ZIP, directory / SERVER_ZIP
    missing = [p.name for p in (client_zip, server_zip) if not p.is_file()]
    if not directory.is_dir() or missing:
        raise DeploymentFormatError(
            f"{directory} is not a deployment directory (missing {missing or 'the directory'}). "
            "Create one with: python -m fhe_model compile --model MODEL --output DIR"
        )
    return client_zip, server_zip


def remove_circuit_files(circuit_server: Any) -> bool:
    """Delete the temporary directory Concrete compiled a circuit's library into.

    Concrete creates one such directory (about 100 kB) for every compile and
    every loaded ``server.zip`` and never deletes it (its ``Server.cleanup`` is
    a no-op), so a long-lived process would leak one per session. Call this
    when the circuit is no longer needed; a run already in progress is not
    affected, since the library stays mapped until it is unloaded.

    Parameters
    ----------
    circuit_server : concrete.fhe.Server
        The circuit's server object (``FHEModelServer.server`` or
        ``model.fhe_circuit.server``).

    Returns
    -------
    bool
        Whether a directory was removed. Only directories inside the system
        temporary directory are ever touched.
    """
    import shutil
    import tempfile

    try:
        path = Path(circuit_server._library.get_output_dir_path()).resolve()
    except (AttributeError, RuntimeError, TypeError):
        return False
    if path.parent != Path(tempfile.gettempdir()).resolve() or not path.is_dir():
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True
