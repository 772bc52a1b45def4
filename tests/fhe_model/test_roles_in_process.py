"""Developer, client and server roles in-process, with real keys and real FHE."""

from __future__ import annotations

import io
import json
import stat
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fhe_model import developer
from fhe_model.client import FHEClient, FHEClientError, decrypt_with_fresh_keys
from fhe_model.deployment import (
    MODEL_INFO_ENTRY,
    DeploymentFormatError,
    check_server_zip,
    make_bundle,
    read_model_info,
    split_upload,
)
from fhe_model.developer import (
    calibration_inputs,
    check_compile_settings,
    compile_model,
    n_bits_sweep,
)
from fhe_model.evaluation import evaluate_encrypted, in_process_server_call
from fhe_model.server import (
    FHEServer,
    IncompatiblePayloadError,
    MalformedPayloadError,
    StoreLimits,
    UnknownDeploymentError,
    UnknownKeyError,
)
from tests.helpers import ROOT, FakeClock, circuit_dirs, rezip_bytes

# -- developer ---------------------------------------------------------------


def test_compile_report_and_files(digits_deployment):
    report = digits_deployment.compiled.report
    assert report.n_bits == 8 and report.dataset == "digits" and report.n_features == 64
    assert 8 < report.max_bit_width <= 32
    assert report.compile_seconds > 0
    assert report.clear_accuracy > 0.9
    assert report.quantized_accuracy >= report.clear_accuracy - 0.03
    assert report.fhe_simulated_accuracy >= report.clear_accuracy - 0.03
    assert report.fhe_clear_agreement >= 0.97
    assert report.range_check_passed

    files = digits_deployment.files
    assert files.client_zip.stat().st_size == files.client_zip_bytes > 0
    with zipfile.ZipFile(files.client_zip) as z:
        names = set(z.namelist())
    assert {"client.specs.json", "serialized_processing.json", "versions.json", MODEL_INFO_ENTRY} == names
    check_server_zip(files.server_zip.read_bytes())
    info = read_model_info(files.client_zip)
    assert info.n_features == 64 and info.classes == tuple(range(10)) and info.n_bits == 8
    assert json.loads(files.report.read_text())["n_bits"] == 8


@pytest.mark.parametrize("bad", [1, 17, 0, -3, 8.5, float("nan"), True, "8", None])
def test_n_bits_validation_rejects(bad):
    with pytest.raises(ValueError, match="n_bits must be a whole number from 2 to 16"):
        check_compile_settings(n_bits=bad)


@pytest.mark.parametrize(("value", "expected"), [(8.0, 8), (np.int64(3), 3), (16, 16), (np.float32(2.0), 2)])
def test_n_bits_validation_accepts_whole_numbers(value, expected):
    validated = check_compile_settings(n_bits=value)[0]
    assert validated == expected and type(validated) is int


def test_calibration_validation(digits_deployment):
    assert check_compile_settings(calibration="random")[1] == "random"
    for bad in ("nearest", None, ["data"]):
        with pytest.raises(ValueError, match=r"^calibration must be one of data, random, got "):
            check_compile_settings(calibration=bad)
    with pytest.raises(ValueError, match="got 'nearest'"):
        compile_model(digits_deployment.model, digits_deployment.dataset, calibration="nearest")


def test_n_bits_sweep_keeps_only_reports(digits_deployment, monkeypatch):
    created: list[Path] = []

    def compile_and_record(*args, **kwargs):
        compiled = compile_model(*args, **kwargs)
        dirs = circuit_dirs(compiled)
        assert all(path.is_dir() for path in dirs)
        created.extend(dirs)
        return compiled

    monkeypatch.setattr(developer, "compile_model", compile_and_record)
    calls = []
    reports = n_bits_sweep(digits_deployment.model, digits_deployment.dataset, (3, 4.0), samples=20,
                           progress=lambda done, total: calls.append((done, total)))
    assert [r.n_bits for r in reports] == [3, 4] and calls == [(1, 2), (2, 2)]
    assert all(r.evaluation_samples == 20 and r.calibration_samples == 300 for r in reports)
    assert len(created) == 4
    assert not [path for path in created if path.exists()], "the sweep left compiled circuits behind"

    created.clear()
    with pytest.raises(ValueError, match="got 20"):  # refused before anything compiles
        n_bits_sweep(digits_deployment.model, digits_deployment.dataset, (3, 20))
    with pytest.raises(ValueError, match="calibration must be one of"):
        n_bits_sweep(digits_deployment.model, digits_deployment.dataset, calibration="nearest")
    assert created == []


@pytest.mark.parametrize("n_bits", [2, 16])
def test_n_bits_extremes_compile(digits_deployment, n_bits):
    compiled = compile_model(
        digits_deployment.model, digits_deployment.dataset, n_bits=n_bits,
        calibration_samples=200, evaluation_samples=30,
    )
    assert compiled.report.n_bits == n_bits and compiled.report.range_check_passed


def test_random_calibration_needs_no_data(digits_deployment):
    dataset = digits_deployment.dataset
    X = calibration_inputs(dataset, "random", 500, seed=1)
    assert X.shape == (500, 64)
    assert np.all(X >= dataset.feature_low) and np.all(X <= dataset.feature_high)
    assert not np.isin(X[:5], dataset.X_train).all()
    compiled = compile_model(digits_deployment.model, dataset, calibration="random",
                             calibration_samples=500, evaluation_samples=100)
    assert compiled.report.calibration == "random"
    assert compiled.report.fhe_clear_agreement >= 0.9
    with pytest.raises(ValueError, match="data, random"):  # refused with the request, before any draw
        compile_model(digits_deployment.model, dataset, calibration="nearest")


def test_compile_works_from_another_thread(digits_deployment):
    """Gradio runs events on worker threads; Concrete's tracer state is thread-local."""
    results, errors = [], []

    def compile_in_thread() -> None:
        try:
            results.append(compile_model(digits_deployment.model, digits_deployment.dataset,
                                         calibration_samples=100, evaluation_samples=10))
        except Exception as exc:  # reported below, with its message
            errors.append(exc)

    thread = threading.Thread(target=compile_in_thread)
    thread.start()
    thread.join()
    assert not errors, errors
    assert results[0].report.range_check_passed


def test_model_must_fit_dataset(digits_deployment):
    from fl_training.datasets import load_dataset

    with pytest.raises(ValueError, match="features"):
        compile_model(digits_deployment.model, load_dataset("breast-cancer"))


# -- client + server ---------------------------------------------------------


def test_keygen_encrypt_run_decrypt(digits_deployment, keyed_client):
    client = keyed_client
    keygen_dir = client.key_dir
    files = [p for p in keygen_dir.rglob("*") if p.is_file()]
    assert files, "the private key must be written into the caller's key directory"
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert stat.S_IMODE(keygen_dir.stat().st_mode) == 0o700

    server = FHEServer()
    server.add_deployment_dir(digits_deployment.files.directory)
    key_id = server.register_keys(client.evaluation_keys)

    X = digits_deployment.dataset.X_test[:5]
    expected = digits_deployment.expected(X)
    for x, want in zip(X, expected, strict=True):
        encrypted = client.encrypt(x)
        assert encrypted.ciphertext_bytes == len(encrypted.ciphertext) > 64
        assert len(encrypted.ciphertext_preview.split(" … ")[0].split()) == 16
        q = digits_deployment.compiled.concrete_model.quantize_input(x[None])[0]
        np.testing.assert_array_equal(encrypted.quantized_input, q)
        assert x.tobytes() not in encrypted.ciphertext
        output = server.run(key_id, encrypted.ciphertext)
        result = client.decrypt(output)
        assert result.decrypted and result.prediction == want
        assert result.probabilities.shape == (10,)
        assert abs(result.probabilities.sum() - 1) < 1e-6
        assert result.ciphertext_bytes == len(output)


def test_keygen_reports_sizes_and_reuses_key_dir(digits_deployment, tmp_path):
    first = FHEClient(digits_deployment.files.directory, tmp_path / "k")
    keygen = first.generate_keys()
    assert not keygen.reused
    on_disk = sum(p.stat().st_size for p in (tmp_path / "k").rglob("*") if p.is_file())
    assert keygen.private_key_bytes == on_disk
    assert keygen.private_key_bytes > 1000
    assert keygen.evaluation_key_bytes == len(first.evaluation_keys) > 0

    again = FHEClient(digits_deployment.files.directory, tmp_path / "k")
    assert again.generate_keys().reused
    server = FHEServer()
    server.add_deployment_dir(digits_deployment.files.directory)
    key_id = server.register_keys(first.evaluation_keys)
    x = digits_deployment.dataset.X_test[7]
    output = server.run(key_id, first.encrypt(x).ciphertext)
    assert again.decrypt(output).prediction == first.decrypt(output).prediction


def test_decrypt_with_wrong_key_gives_garbage_not_a_crash(digits_deployment, keyed_client, tmp_path):
    server = FHEServer()
    server.add_deployment_dir(digits_deployment.files.directory)
    key_id = server.register_keys(keyed_client.evaluation_keys)
    X = digits_deployment.dataset.X_test[:4]
    outputs = [server.run(key_id, keyed_client.encrypt(x).ciphertext) for x in X]

    intruder_results = [
        decrypt_with_fresh_keys(digits_deployment.files.directory, tmp_path / f"intruder{i}", out)
        for i, out in enumerate(outputs)
    ]
    owner_results = [keyed_client.decrypt(out) for out in outputs]
    for mine, theirs in zip(owner_results, intruder_results, strict=True):
        assert theirs.decrypted  # Concrete cannot tell a wrong key: it yields noise
        assert not np.array_equal(mine.decrypted_scores, theirs.decrypted_scores)
    with pytest.raises(ValueError, match="not empty"):
        decrypt_with_fresh_keys(digits_deployment.files.directory, keyed_client.key_dir, outputs[0])

    refused = keyed_client.attempt_decrypt(b"not a ciphertext")
    assert not refused.decrypted and "refused" in refused.error and refused.prediction is None
    with pytest.raises(FHEClientError):
        keyed_client.decrypt(b"not a ciphertext")


def test_client_input_checks(digits_deployment, tmp_path):
    client = FHEClient(digits_deployment.files.directory, tmp_path / "k")
    with pytest.raises(FHEClientError, match="generate_keys"):
        client.encrypt(np.zeros(64))
    client.generate_keys()
    with pytest.raises(ValueError, match="64 features"):
        client.encrypt(np.zeros(30))
    with pytest.raises(ValueError, match="NaN"):
        client.encrypt(np.full(64, np.nan))
    with pytest.raises(FHEClientError, match="client.zip"):
        FHEClient(tmp_path, tmp_path / "k2")


def test_extreme_input_is_exact_in_fhe(digits_deployment, keyed_client):
    """Saturated inputs (far from the training data) must not overflow the circuit."""
    server = FHEServer()
    server.add_deployment_dir(digits_deployment.files.directory)
    key_id = server.register_keys(keyed_client.evaluation_keys)
    coef = digits_deployment.model.coef_
    extremes = np.array(
        [np.full(64, 16.0), np.where(coef[3] > 0, 16.0, 0.0), np.where(coef[5] > 0, 0.0, 16.0)]
    )
    expected_scores = digits_deployment.compiled.concrete_model.decision_function(extremes)
    for x, want in zip(extremes, expected_scores, strict=True):
        result = keyed_client.decrypt(server.run(key_id, keyed_client.encrypt(x).ciphertext))
        assert result.prediction == int(np.argmax(want))


# -- server store ------------------------------------------------------------


def test_server_keys_expire_and_are_bounded(digits_deployment, keyed_client):
    clock = FakeClock()
    server = FHEServer(StoreLimits(key_ttl_seconds=60, max_keys=2), clock=clock)
    server.add_deployment_dir(digits_deployment.files.directory)
    keys = keyed_client.evaluation_keys
    ciphertext = keyed_client.encrypt(digits_deployment.dataset.X_test[0]).ciphertext
    # Keys uploaded with the admin token: that pool evicts its least recently used (the
    # anonymous pool never evicts, see test_http_server_limits.py).
    a, b = server.register_keys(keys, trusted=True), server.register_keys(keys, trusted=True)
    server.run(a, ciphertext)  # a becomes most recently used
    c = server.register_keys(keys, trusted=True)  # evicts b, the least recently used
    with pytest.raises(UnknownKeyError):
        server.run(b, ciphertext)
    server.run(a, ciphertext)
    clock.now += 61
    with pytest.raises(UnknownKeyError, match="expired"):
        server.run(c, ciphertext)
    assert server.stats()["keys"] == 0
    # The pinned deployment never expires.
    assert server.client_zip() == digits_deployment.files.client_zip.read_bytes()


def test_uploaded_deployments_expire_and_are_bounded(digits_deployment, other_deployment):
    clock = FakeClock()
    server = FHEServer(StoreLimits(deployment_ttl_seconds=100, max_uploaded_deployments=1), clock=clock)
    pinned = server.add_deployment_dir(digits_deployment.files.directory)
    bundle = make_bundle(other_deployment.files.server_zip.read_bytes(),
                         other_deployment.files.client_zip.read_bytes())
    first = server.add_deployment_bytes(bundle)
    assert server.client_zip(first) == other_deployment.files.client_zip.read_bytes()
    second = server.add_deployment_bytes(other_deployment.files.server_zip.read_bytes())
    with pytest.raises(UnknownDeploymentError):
        server.client_zip(first)  # evicted by the second upload
    with pytest.raises(UnknownDeploymentError, match="without a client.zip"):
        server.client_zip(second)
    clock.now += 101
    with pytest.raises(UnknownDeploymentError):
        server.resolve_deployment(second)
    assert server.resolve_deployment(pinned) == pinned
    assert server.default_deployment_id == pinned


def test_server_rejects_bad_payloads(digits_deployment, other_deployment, keyed_client, tmp_path):
    server = FHEServer()
    server.add_deployment_dir(digits_deployment.files.directory)
    with pytest.raises(MalformedPayloadError, match="evaluation keys"):
        server.register_keys(b"\x00garbage" * 10)
    with pytest.raises(MalformedPayloadError):
        server.register_keys(b"")
    with pytest.raises(UnknownDeploymentError):
        server.register_keys(keyed_client.evaluation_keys, "no-such-deployment")
    key_id = server.register_keys(keyed_client.evaluation_keys)
    with pytest.raises(MalformedPayloadError, match="ciphertext"):
        server.run(key_id, b"\x01" * 100)
    other = FHEClient(other_deployment.files.directory, tmp_path / "other")
    other.generate_keys()
    foreign = other.encrypt(digits_deployment.dataset.X_test[0]).ciphertext
    with pytest.raises(IncompatiblePayloadError, match="does not fit"):
        server.run(key_id, foreign)
    # Still serving after all of that.
    good = server.run(key_id, keyed_client.encrypt(digits_deployment.dataset.X_test[0]).ciphertext)
    assert keyed_client.decrypt(good).decrypted


def test_upload_validation(digits_deployment, other_deployment):
    server_zip = digits_deployment.files.server_zip.read_bytes()
    client_zip = digits_deployment.files.client_zip.read_bytes()
    assert split_upload(server_zip) == (server_zip, None)
    assert split_upload(make_bundle(server_zip, client_zip)) == (server_zip, client_zip)
    with pytest.raises(DeploymentFormatError, match="not built with"):
        split_upload(make_bundle(server_zip, other_deployment.files.client_zip.read_bytes()))
    with pytest.raises(DeploymentFormatError, match="unexpected entries"):
        split_upload(rezip_bytes(server_zip, {"sharedlib.so": b"\x7fELF"}))
    with pytest.raises(DeploymentFormatError, match="lacks"):
        split_upload(rezip_bytes(server_zip, {"circuit.mlir": None}))
    config = json.loads(zipfile.ZipFile(io.BytesIO(server_zip)).read("configuration.json"))
    config["verbose"] = {"py/function": "os.system"}
    with pytest.raises(DeploymentFormatError, match="py/function"):
        split_upload(rezip_bytes(server_zip, {"configuration.json": json.dumps(config).encode()}))
    config["verbose"] = {"py/object": "subprocess.Popen"}
    with pytest.raises(DeploymentFormatError, match="subprocess.Popen"):
        split_upload(rezip_bytes(server_zip, {"configuration.json": json.dumps(config).encode()}))
    with pytest.raises(DeploymentFormatError, match="unpacks to more than"):
        split_upload(server_zip, max_uncompressed_bytes=100)
    with pytest.raises(DeploymentFormatError, match="not a zip"):
        split_upload(b"PK\x03\x04 nope")


# -- batch evaluation -------------------------------------------------------


def test_evaluate_in_process_reports_and_calls_progress(digits_deployment, keyed_client):
    X = digits_deployment.dataset.X_test[:6]
    y = digits_deployment.dataset.y_test[:6]
    clear = digits_deployment.model.predict(X)
    calls = []
    run = in_process_server_call(digits_deployment.files.directory, keyed_client.evaluation_keys)
    report = evaluate_encrypted(
        keyed_client, run, X, y, clear_predictions=clear, workers=2,
        progress=lambda done, total, sample: calls.append((done, total, sample.index)), mode="in-process",
    )
    assert [c[0] for c in calls] == list(range(1, 7)) and {c[2] for c in calls} == set(range(6))
    predictions = np.array([s.prediction for s in report.samples])
    np.testing.assert_array_equal(predictions, digits_deployment.expected(X))
    assert report.encrypted_accuracy == np.mean(predictions == y)
    assert report.clear_accuracy == np.mean(clear == y)
    assert report.agreement == np.mean(clear == predictions)
    assert report.n_samples == 6 and report.workers == 2
    assert report.samples_per_second > 0 and report.mean_latency_seconds > 0
    assert report.mean_server_seconds > 0 and report.input_ciphertext_bytes > 0
    assert "samples" not in report.to_dict()


def test_evaluation_stops_on_server_error(digits_deployment, keyed_client):
    def broken(_ciphertext: bytes) -> bytes:
        raise MalformedPayloadError("server says no")

    with pytest.raises(MalformedPayloadError, match="server says no"):
        evaluate_encrypted(keyed_client, broken, digits_deployment.dataset.X_test[:3],
                           digits_deployment.dataset.y_test[:3], workers=2)


def test_server_modules_cannot_reach_private_keys():
    code = (
        "import sys, fhe_model.http_server, fhe_model.server;"
        "bad = [m for m in ('fhe_model.client', 'fhe_model.connection', 'fhe_model.evaluation',"
        " 'fhe_model.http_client')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
