"""Helpers of the tests that build altered .skops files (a skops file is a zip archive)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path


def rezip(source: Path, target: Path, replace: dict[str, bytes], extra: dict | None = None) -> Path:
    """Copy a zip, replacing some members' bytes and adding others."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, replace.get(name, src.read(name)))
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return target


def read_schema(path: Path) -> dict:
    """The ``schema.json`` of a skops file."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("schema.json"))
