"""``python -m fhe_model``: compile, evaluate, serve and the bring-your-own client."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fhe_model.__main__ import main
from fl_training.model_io import save_model
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def model_file(digits_model, tmp_path_factory) -> Path:
    return save_model(digits_model, tmp_path_factory.mktemp("model") / "digits.skops")


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_compile_writes_a_deployment(model_file, tmp_path, capsys):
    out = tmp_path / "deployment"
    code = main(["compile", "--model", str(model_file), "--dataset", "digits", "--n-bits", "6",
                 "--calibration", "random", "--evaluation-samples", "50", "--output", str(out), "--json"])
    assert code == 0
    report = _last_json(capsys.readouterr().out)
    assert report["n_bits"] == 6 and report["calibration"] == "random"
    assert report["max_bit_width"] > 6 and 0 < report["compile_seconds"] < 60
    assert report["fhe_clear_agreement"] >= 0.9
    assert (out / "client.zip").stat().st_size == report["client_zip_bytes"]
    assert (out / "server.zip").is_file() and (out / "deployment.json").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--n-bits", "20"], "n_bits must be a whole number from 2 to 16"),
        (["--dataset", "breast-cancer"], "features"),
        (["--calibration-samples", "0"], "calibration_samples"),
    ],
)
def test_compile_user_errors(model_file, tmp_path, capsys, extra, message):
    code = main(["compile", "--model", str(model_file), "--dataset", "digits",
                 "--output", str(tmp_path / "out"), *extra])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_compile_refuses_missing_model_and_non_empty_output(model_file, tmp_path, capsys):
    assert main(["compile", "--model", str(tmp_path / "nope.skops"), "--output", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["compile", "--model", str(model_file), "--dataset", "digits",
                 "--output", str(tmp_path / "busy")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    with pytest.raises(SystemExit) as exit_info:
        main(["compile", "--model", str(model_file), "--output", "x", "--calibration", "nearest"])
    assert exit_info.value.code == 2


def test_evaluate_in_process(model_file, digits_deployment, capsys):
    code = main(["evaluate", "--deployment", str(digits_deployment.files.directory),
                 "--model", str(model_file), "--dataset", "digits", "--samples", "4", "--workers", "2",
                 "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = _last_json(captured.out)
    assert report["mode"] == "in-process" and report["n_samples"] == 4
    X, y = digits_deployment.dataset.X_test[:4], digits_deployment.dataset.y_test[:4]
    assert report["encrypted_accuracy"] == pytest.approx((digits_deployment.expected(X) == y).mean())
    assert report["clear_accuracy"] == pytest.approx((digits_deployment.model.predict(X) == y).mean())
    assert report["private_key_bytes"] > 0 and report["evaluation_key_bytes"] > 0
    assert "4/4 samples" in captured.err


def test_evaluate_rejects_a_mismatched_dataset(model_file, digits_deployment, capsys):
    code = main(["evaluate", "--deployment", str(digits_deployment.files.directory), "--model",
                 str(model_file), "--dataset", "breast-cancer", "--samples", "2"])
    assert code == 1 and "features" in capsys.readouterr().err


@pytest.fixture(scope="module")
def served(digits_deployment, tmp_path_factory):
    """``python -m fhe_model serve`` in its own process, on a free port."""
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "fhe_model", "serve", "--deployment", str(digits_deployment.files.directory),
         "--port", "0", "--log-level", "warning"],
        stdout=log, stderr=log, cwd=ROOT, env={**os.environ, "FHE_ADMIN_TOKEN": "cli-token"},
    )
    try:
        deadline = time.monotonic() + 120
        url = None
        while url is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
            log.seek(0)
            match = re.search(r"FHE server on (http://127\.0\.0\.1:\d+),.*uploads enabled", log.read())
            url = match.group(1) if match else None
        log.seek(0)
        assert url, f"server did not start:\n{log.read()}"
        yield url
    finally:
        process.terminate()
        process.wait(10)
        log.close()


@pytest.mark.slow
def test_serve_and_bring_your_own_client(served, digits_deployment, tmp_path):
    key_dir = tmp_path / "my-keys"
    result = subprocess.run(
        [sys.executable, "-m", "fhe_model", "client", "--server", served, "--dataset", "digits",
         "--samples", "3", "--key-dir", str(key_dir), "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    report = _last_json(result.stdout)
    X, y = digits_deployment.dataset.X_test[:3], digits_deployment.dataset.y_test[:3]
    assert report["mode"] == "http" and report["n_samples"] == 3
    assert report["encrypted_accuracy"] == pytest.approx((digits_deployment.expected(X) == y).mean())
    assert report["private_key_bytes"] == sum(p.stat().st_size for p in key_dir.rglob("*") if p.is_file())
    # The decrypted predictions are the clear scikit-learn model's.
    assert report["predictions"] == digits_deployment.model.predict(X).tolist()


@pytest.mark.slow
def test_client_user_errors(served, capsys, tmp_path):
    assert main(["client", "--server", served, "--dataset", "breast-cancer", "--samples", "1"]) == 1
    assert "30" in capsys.readouterr().err
    assert main(["client", "--server", served, "--dataset", "digits", "--deployment-id", "unknown"]) == 1
    err = capsys.readouterr().err
    assert "Unknown deployment" in err and "Traceback" not in err
    assert main(["client", "--server", "http://127.0.0.1:9", "--dataset", "digits"]) == 1
    assert "Cannot reach" in capsys.readouterr().err
