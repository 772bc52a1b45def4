"""The deployment records its model's preprocessing; every client path applies exactly it, or refuses to run.

Built on a digits model that deskews its inputs (as the default MNIST model does), so that it compiles
in seconds: the client, the command line and the remote client must each hand the circuit the same
deskewed features as the training's clients and the app.
"""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from fhe_model.__main__ import main
from fhe_model.client import FHEClient, FHEClientError
from fhe_model.deployment import CLIENT_ZIP, MODEL_INFO_ENTRY, read_model_info
from fl_training.model_io import save_model
from fl_training.preprocessing import DESKEW, RAW, deskew_images
from tests.fl_training.test_evaluate_cli import write_idx


def _deskewed(X: np.ndarray) -> np.ndarray:
    return deskew_images(np.atleast_2d(X), (8, 8))


def test_a_deployment_records_its_models_preprocessing(deskew_deployment, digits_deployment):
    assert read_model_info(deskew_deployment.files.client_zip).preprocessing == DESKEW
    assert read_model_info(digits_deployment.files.client_zip).preprocessing == RAW
    # Compiled and scored on the inputs the model takes: its clear accuracy is its deskewed one.
    dataset = deskew_deployment.dataset
    n = deskew_deployment.compiled.report.evaluation_samples
    expected = deskew_deployment.model.score(_deskewed(dataset.X_test[:n]), dataset.y_test[:n])
    assert deskew_deployment.compiled.report.clear_accuracy == pytest.approx(expected)


def test_the_client_deskews_before_it_quantizes_and_encrypts(deskew_deployment, tmp_path):
    client = FHEClient(deskew_deployment.files.directory, tmp_path / "keys", expect_preprocessing=DESKEW)
    client.generate_keys()
    x = deskew_deployment.dataset.X_test[11]
    encrypted = client.encrypt(x)
    np.testing.assert_allclose(encrypted.model_input, _deskewed(x)[0])
    quantized = deskew_deployment.compiled.concrete_model.quantize_input(_deskewed(x))[0]
    np.testing.assert_array_equal(encrypted.quantized_input, quantized)
    assert not np.array_equal(quantized, deskew_deployment.compiled.concrete_model.quantize_input(x[None])[0])


def test_the_remote_client_applies_what_the_downloaded_client_zip_records(deskew_deployment, tmp_path):
    client_zip = deskew_deployment.files.client_zip.read_bytes()
    client = FHEClient.from_client_zip(client_zip, tmp_path / "keys")
    client.generate_keys()
    x = deskew_deployment.dataset.X_test[3]
    assert client.preprocessing == DESKEW
    np.testing.assert_allclose(client.encrypt(x).model_input, _deskewed(x)[0])


def test_a_deployment_that_preprocesses_otherwise_than_its_model_refuses_to_run(
    deskew_deployment, digits_deployment, tmp_path
):
    with pytest.raises(
        FHEClientError, match="preprocessed as 'deskew', but the model it is used with takes 'none'"
    ):
        FHEClient(deskew_deployment.files.directory, tmp_path / "a", expect_preprocessing=RAW)
    with pytest.raises(
        FHEClientError, match="preprocessed as 'none'.*takes 'deskew'.*Compile the deployment again"
    ):
        FHEClient.from_client_zip(
            digits_deployment.files.client_zip.read_bytes(), tmp_path / "b", expect_preprocessing=DESKEW
        )


def test_a_client_zip_naming_a_preprocessing_this_client_does_not_know_is_refused(
    deskew_deployment, tmp_path
):
    original = deskew_deployment.files.client_zip.read_bytes()
    rewritten = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(original)) as source, zipfile.ZipFile(rewritten, "w") as target:
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename == MODEL_INFO_ENTRY:
                data = json.dumps({**json.loads(data), "preprocessing": "sharpen"}).encode()
            target.writestr(entry.filename, data)
    folder = tmp_path / "deployment"
    folder.mkdir()
    (folder / CLIENT_ZIP).write_bytes(rewritten.getvalue())
    with pytest.raises(FHEClientError, match="Unknown preprocessing 'sharpen'.*Update the demo"):
        FHEClient(folder, tmp_path / "keys")


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    from fl_training.datasets import load_dataset

    folder = tmp_path_factory.mktemp("idx")
    dataset = load_dataset("digits")
    images = write_idx(folder / "images.gz", dataset.X_test[:6].reshape(-1, 8, 8), gzipped=True)
    return images, write_idx(folder / "labels", dataset.y_test[:6])


def test_encrypted_evaluation_cli_reads_idx_files_and_refuses_a_model_of_other_preprocessing(
    deskew_deployment, digits_model, digits_files, tmp_path, capsys
):
    images, labels = digits_files
    model_file = save_model(deskew_deployment.model, tmp_path / "deskew.skops")
    code = main(
        [
            "evaluate",
            "--deployment",
            str(deskew_deployment.files.directory),
            "--model",
            str(model_file),
            "--dataset",
            "digits",
            "--images",
            str(images),
            "--labels",
            str(labels),
            "--workers",
            "1",
            "--json",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out.strip().splitlines()[-1])
    X, y = deskew_deployment.dataset.X_test[:6], deskew_deployment.dataset.y_test[:6]
    assert report["n_samples"] == 6 and report["preprocessing"] == DESKEW
    assert report["agreement"] == 1.0
    assert report["clear_accuracy"] == pytest.approx(deskew_deployment.model.score(_deskewed(X), y))
    assert report["encrypted_accuracy"] == pytest.approx(
        (deskew_deployment.expected(_deskewed(X)) == y).mean()
    )

    raw_file = save_model(digits_model, tmp_path / "raw.skops")
    code = main(
        [
            "evaluate",
            "--deployment",
            str(deskew_deployment.files.directory),
            "--model",
            str(raw_file),
            "--dataset",
            "digits",
            "--samples",
            "2",
        ]
    )
    assert code == 1 and "Compile the deployment again" in capsys.readouterr().err
