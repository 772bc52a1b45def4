"""MNIST's own file format (IDX), gzipped or not: images and labels a data owner brings to score a model.

An IDX file is a 4-byte magic number (two zero bytes, the element type, the
number of dimensions), one big-endian 32-bit size per dimension, then the
elements in row-major order. MNIST ships ``*-images-idx3-ubyte`` (n × 28 × 28
unsigned bytes) and ``*-labels-idx1-ubyte`` (n unsigned bytes), usually gzipped.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

#: The most bytes an IDX file may hold once unzipped: MNIST's 60,000 training images are 47 MB.
MAX_IDX_BYTES = 64 * 1024 * 1024
#: Element types (the magic number's third byte) and how numpy reads them (IDX is big-endian).
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXFileError(ValueError):
    """A file that is not a usable IDX file of images or labels; the message says what to pass."""


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, unzipped if gzipped, refused past :data:`MAX_IDX_BYTES` without reading further."""
    if not path.is_file():
        raise IDXFileError(f"{path} does not exist; pass an MNIST IDX file (e.g. t10k-images-idx3-ubyte.gz).")
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == _GZIP_MAGIC
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as fh:
            data = fh.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise IDXFileError(f"{path.name} is not a readable gzip file ({exc}).") from exc
    if len(data) > MAX_IDX_BYTES:
        raise IDXFileError(
            f"{path.name} holds more than {MAX_IDX_BYTES // 2**20} MB of data; MNIST's largest IDX file is "
            "47 MB. Pass a smaller set of images."
        )
    return data


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not).

    Parameters
    ----------
    path : path-like
        The file.

    Returns
    -------
    ndarray
        Its elements, in the shape its header gives.

    Raises
    ------
    IDXFileError
        If it is missing, too large, not an IDX file, or its size disagrees with its header.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_TYPES or not 1 <= data[3] <= 4:
        raise IDXFileError(
            f"{path.name} is not an IDX file (it does not start with MNIST's magic number); pass MNIST's "
            "images-idx3-ubyte and labels-idx1-ubyte files, gzipped or not."
        )
    dtype, ndim = np.dtype(IDX_TYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFileError(f"{path.name} ends inside its header: the file is truncated.")
    shape = tuple(int(n) for n in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise IDXFileError(
            f"{path.name}'s header announces {' × '.join(map(str, shape))} elements ({expected:,} bytes), "
            f"but the file holds {len(data) - header:,} bytes after it: it is truncated or not an IDX file."
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def load_images_and_labels(
    images: str | os.PathLike, labels: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Read an IDX file of images and one of their labels.

    Parameters
    ----------
    images : path-like
        n × height × width pixels (MNIST: unsigned bytes, 0 background to 255 ink).
    labels : path-like
        n labels.

    Returns
    -------
    X : ndarray of float64, shape (n, height * width)
        Raw features, one row per image.
    y : ndarray of int64, shape (n,)
        Labels.
    image_shape : (height, width)

    Raises
    ------
    IDXFileError
        If a file is unusable, the images are not 3-D, the labels not 1-D, or their counts differ.
    """
    pixels, targets = read_idx(images), read_idx(labels)
    if pixels.ndim != 3 or pixels.shape[0] == 0:
        raise IDXFileError(
            f"{Path(images).name} holds an array of shape {pixels.shape}, not images (n × height × width): "
            "pass MNIST's images-idx3-ubyte file as --images."
        )
    if targets.ndim != 1:
        raise IDXFileError(
            f"{Path(labels).name} holds an array of shape {targets.shape}, not one label per image: pass "
            "MNIST's labels-idx1-ubyte file as --labels."
        )
    if len(targets) != len(pixels):
        raise IDXFileError(
            f"{Path(images).name} holds {len(pixels):,} images but {Path(labels).name} {len(targets):,} "
            "labels: pass the labels of these images."
        )
    X = pixels.reshape(len(pixels), -1).astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise IDXFileError(f"{Path(images).name} holds NaN or infinite pixels.")
    return X, targets.astype(np.int64), (int(pixels.shape[1]), int(pixels.shape[2]))
