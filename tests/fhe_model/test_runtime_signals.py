"""Concrete's runtime must not take SIGPIPE: a browser that disconnects mid-answer once aborted the
whole app under a 120-visitor load."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")]

PROBE = textwrap.dedent("""
    import os, signal
    from fhe_model import developer
    from fl_training.datasets import load_dataset
    from tests.helpers import fit_logistic

    developer.compile_model(fit_logistic("digits"), load_dataset("digits"), n_bits=6)  # the runtime starts
    os.kill(os.getpid(), signal.SIGPIPE)  # a peer closed its socket while we wrote
    print("alive", flush=True)
""")


def test_a_compile_leaves_sigpipe_ignored():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "alive" in done.stdout
