"""End to end through ``gradio_client`` against a launched app (127.0.0.1, free port).

The whole flow train → compile → keygen → encrypt → run_fhe → decrypt →
evaluate_encrypted runs on digits with real Flower, Concrete ML and the HTTP
FHE server; refusals must arrive through the API as named errors.
"""

from __future__ import annotations

import json
import math

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from fl_training.datasets import load_dataset
from tests.app_fixtures import SMALL_TRAINING, launched_app  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def client(launched_app):  # noqa: F811 - fixture
    return Client(launched_app.url, verbose=False)


def test_every_endpoint_has_defaults_and_the_documented_parameters(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    expected = {
        "/train": ["dataset", "num_clients", "num_rounds", "partitioning", "alpha", "classes_per_client",
                   "strategy", "local_epochs", "seed", "differential_privacy", "noise_multiplier",
                   "clipping_norm", "secure_aggregation"],
        "/compile": ["n_bits", "calibration"],
        "/keygen": [],
        "/encrypt": ["sample_index", "source", "drawing"],
        "/run_fhe": [],
        "/decrypt": [],
        "/evaluate_encrypted": ["num_samples"],
        "/upload_model": ["file", "dataset"],
    }
    for name, parameters in expected.items():
        assert [p["parameter_name"] for p in api[name]["parameters"]] == parameters, name
        assert all(p["parameter_has_default"] for p in api[name]["parameters"]), name


def test_out_of_order_calls_name_the_missing_step(launched_app):  # noqa: F811 - fixture
    fresh = Client(launched_app.url, verbose=False)
    for api_name, kwargs, message in [
        ("/compile", {}, "No model yet"),
        ("/keygen", {}, "No model yet"),
        ("/encrypt", {"sample_index": 0}, "No model yet"),
        ("/run_fhe", {}, "No model yet"),
        ("/decrypt", {}, "No model yet"),
        ("/evaluate_encrypted", {"num_samples": 3}, "No model yet"),
    ]:
        with pytest.raises(AppError, match=message):
            fresh.predict(api_name=api_name, **kwargs)


@pytest.mark.parametrize(
    ("api_name", "kwargs", "message"),
    [
        ("/train", {"num_clients": 0}, "num_clients must be a whole number from 2 to 100, got 0"),
        ("/train", {"num_clients": 10_000}, "num_clients must be a whole number from 2 to 100"),
        ("/train", {"num_rounds": 0}, "num_rounds must be a whole number from 1 to 100"),
        ("/compile", {"n_bits": 0}, "n_bits must be a whole number from 2 to 16"),
        ("/compile", {"n_bits": 64}, "n_bits must be a whole number from 2 to 16"),
        ("/evaluate_encrypted", {"num_samples": 0}, "num_samples must be a whole number"),
    ],
)
def test_bad_values_through_the_api_are_named(client, api_name, kwargs, message):
    with pytest.raises(AppError, match=message):
        client.predict(api_name=api_name, **kwargs)


def test_nan_sent_as_raw_json_is_refused_with_a_message(launched_app):  # noqa: F811 - fixture
    # gradio_client refuses to serialize NaN itself; a hand-written request can still send it.
    body = '{"data": ["digits", NaN, 2, "iid", 0.5, 2, "fedavg", 10, 0, false, 0.5, 5.0, false]}'
    with httpx.Client(base_url=launched_app.url, timeout=60) as http:
        response = http.post(
            "/gradio_api/call/train", content=body, headers={"Content-Type": "application/json"}
        )
        response.raise_for_status()
        event_id = response.json()["event_id"]
        stream = http.get(f"/gradio_api/call/train/{event_id}").text
    assert "event: error" in stream
    assert "num_clients must be a whole number from 2 to 100, got nan" in stream


def test_the_whole_flow_through_the_api(client, launched_app):  # noqa: F811 - fixture
    train = client.predict(**SMALL_TRAINING, api_name="/train")[0]
    assert {"accuracy", "rounds", "clients", "seconds", "history"} <= set(train)
    assert train["rounds"] == 2 and train["clients"] == 3 and len(train["history"]) == 3
    assert train["accuracy"] > 0.8

    # An out-of-order step after training, still with a named error.
    with pytest.raises(AppError, match="not compiled yet"):
        client.predict(api_name="/keygen")

    compiled = client.predict(n_bits=8, api_name="/compile")[0]
    assert compiled["n_bits"] == 8
    assert {"max_bit_width", "compile_seconds", "accuracy_clear", "accuracy_fhe_simulated"} <= set(compiled)
    with pytest.raises(AppError, match="No keys yet"):
        client.predict(sample_index=0, api_name="/encrypt")

    keys = client.predict(api_name="/keygen")[0]
    assert keys["private_key_bytes"] > 0 and keys["evaluation_key_bytes"] > 0 and keys["seconds"] >= 0
    with pytest.raises(AppError, match="Nothing is encrypted yet"):
        client.predict(api_name="/run_fhe")

    n_test = len(load_dataset("digits").X_test)
    with pytest.raises(AppError, match=f"sample_index must be a whole number from 0 to {n_test - 1}"):
        client.predict(sample_index=n_test, api_name="/encrypt")
    encrypted = client.predict(sample_index=3, api_name="/encrypt")[0]
    assert encrypted["label"] == int(load_dataset("digits").y_test[3])
    assert encrypted["ciphertext_bytes"] > 0 and encrypted["seconds"] >= 0
    with pytest.raises(AppError, match="run step ③ FHE execution first"):
        client.predict(api_name="/decrypt")

    ran = client.predict(api_name="/run_fhe")[0]
    assert ran["seconds"] > 0 and ran["output_ciphertext_bytes"] > 0
    decrypted = client.predict(api_name="/decrypt")[0]
    assert decrypted["prediction"] == decrypted["clear_prediction"]
    assert len(decrypted["probabilities"]) == 10
    assert math.isclose(sum(decrypted["probabilities"]), 1, rel_tol=1e-6)
    assert decrypted["seconds"] >= 0

    evaluation = client.predict(num_samples=10, api_name="/evaluate_encrypted")[0]
    assert evaluation["samples"] == 10
    assert {"accuracy_fhe", "accuracy_clear", "seconds_per_sample"} <= set(evaluation)
    assert evaluation["accuracy_fhe"] == pytest.approx(evaluation["accuracy_clear"], abs=0.1)
    json.dumps(evaluation)  # plain JSON, scriptable

    # The server got this session's own deployment and keys: public material only.
    health = httpx.get(launched_app.registry.server.url + "/health").json()
    assert health["deployments"] >= 1 and health["keys"] >= 1


def test_an_error_leaves_the_sessions_work_intact(client):
    # Runs after the flow above (same client session): a failed compile keeps the deployment.
    before = client.predict(api_name="/decrypt")[0]
    with pytest.raises(AppError, match="n_bits"):
        client.predict(n_bits=64, api_name="/compile")
    after = client.predict(api_name="/decrypt")[0]
    assert after["prediction"] == before["prediction"]


def test_another_session_sees_nothing_of_this_one(launched_app):  # noqa: F811 - fixture
    stranger = Client(launched_app.url, verbose=False)
    with pytest.raises(AppError, match="No model yet"):
        stranger.predict(api_name="/decrypt")
