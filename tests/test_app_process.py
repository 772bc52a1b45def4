"""What app.py does to its own process before serving."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_long_lived_objects_are_frozen_and_an_absent_bokeh_fails_at_once():
    script = (
        "import gc, importlib.util, app\n"
        "absent = importlib.util.find_spec('bokeh') is None\n"
        "app.settle_long_lived_objects()\n"
        "print(gc.get_freeze_count())\n"
        "try:\n"
        "    import bokeh\n"
        "    print('imported')\n"
        "except ImportError:\n"
        "    print('absent' if absent else 'broken')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    frozen, bokeh = done.stdout.split()[-2:]
    assert int(frozen) > 100_000  # the libraries and the modules: never walked by a full collection
    assert bokeh in ("absent", "imported")  # marked absent only when it is not installed
