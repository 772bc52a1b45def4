"""End to end through ``gradio_client`` against a launched app (127.0.0.1, free port).

The whole flow train → compile → keygen → encrypt → run_fhe → decrypt →
evaluate_encrypted runs on digits with real Flower, Concrete ML and the HTTP
FHE server; refusals (steps out of order, values outside the sliders,
non-finite or missing values) must arrive through the API as named errors.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from fl_training.datasets import load_dataset
from tests.helpers import SMALL_TRAINING, new_client, raw_call, upload_model


@pytest.fixture(scope="module")
def client(launched_app):
    """One session, walked through the whole flow by the tests below in their order."""
    return Client(launched_app.url, verbose=False)


@pytest.fixture(scope="module")
def stateless_client(launched_app) -> Client:
    """One session for calls that are refused before they touch any session state."""
    return new_client(launched_app)


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


def _blank_png(path: Path) -> Path:
    Image.new("RGBA", (280, 280), (255, 255, 255, 255)).save(path)
    return path


@pytest.mark.slow
def test_every_step_out_of_order_names_the_missing_step_through_the_api(launched_app, model_files, tmp_path):
    client = new_client(launched_app)

    def refused(api_name: str, message: str, **kwargs) -> None:
        with pytest.raises(AppError, match=message):
            client.predict(api_name=api_name, **kwargs)

    for api_name in ("/compile", "/n_bits_sweep", "/keygen", "/encrypt", "/run_fhe", "/decrypt",
                     "/decrypt_wrong_key", "/evaluate_encrypted"):
        refused(api_name, "No model yet: train one in tab 1")
    upload_model(client, model_files["digits"])
    for api_name in ("/keygen", "/encrypt", "/run_fhe", "/decrypt", "/decrypt_wrong_key"):
        refused(api_name, r"not compiled yet: run tab 2")
    client.predict(n_bits=6, api_name="/compile")
    for api_name in ("/encrypt", "/run_fhe", "/decrypt", "/evaluate_encrypted"):
        refused(api_name, "No keys yet: run step ① Key generation first")
    client.predict(api_name="/keygen")
    for api_name in ("/run_fhe", "/decrypt", "/decrypt_wrong_key"):
        refused(api_name, "Nothing is encrypted for this input yet: encrypt this input first")

    dataset = load_dataset("digits")
    last = len(dataset.X_test) - 1
    for index in (last + 1, -1, 2.5):
        refused("/encrypt", f"sample_index must be a whole number from 0 to {last}", sample_index=index)
    blank = handle_file(str(_blank_png(tmp_path / "blank.png")))
    refused("/encrypt", "The drawing is blank", source="drawing",
            drawing={"background": blank, "layers": [], "composite": blank})
    refused("/encrypt", "source must be one of|not in the list of choices", source="microphone")

    encrypted = client.predict(sample_index=last, api_name="/encrypt")[0]
    assert encrypted["label"] == int(dataset.y_test[last])
    refused("/decrypt", "run step ③ FHE execution first")
    client.predict(api_name="/run_fhe")
    decrypted = client.predict(api_name="/decrypt")[0]
    assert decrypted["prediction"] == decrypted["clear_prediction"]


@pytest.mark.parametrize(
    ("api_name", "kwargs", "message"),
    [
        ("/train", {"num_clients": 0}, "num_clients must be a whole number from 2 to 100, got 0"),
        ("/train", {"num_clients": 10_000}, "num_clients must be a whole number from 2 to 100, got 10000"),
        ("/train", {"num_rounds": 0}, "num_rounds must be a whole number from 1 to 100, got 0"),
        ("/train", {"local_epochs": 10**9}, "local_epochs must be a whole number"),
        ("/train", {"partitioning": "dirichlet", "alpha": 0}, "alpha must be a number from"),
        ("/train", {"seed": -1}, "seed must be a whole number from 0"),
        ("/compile", {"n_bits": 0}, "n_bits must be a whole number from 2 to 16, got 0"),
        ("/compile", {"n_bits": 64}, "n_bits must be a whole number from 2 to 16, got 64"),
        ("/evaluate_encrypted", {"num_samples": 0}, "num_samples must be a whole number from 1"),
        ("/evaluate_encrypted", {"num_samples": 10**6},
         "largest batch allowed is 1,000 .*FHE_DEMO_MAX_EVALUATION_SAMPLES"),
    ],
)
def test_values_outside_the_sliders_are_refused_through_the_api(stateless_client, api_name, kwargs, message):
    with pytest.raises(AppError, match=message):
        stateless_client.predict(api_name=api_name, **kwargs)


def _raw_data(client: Client, api_name: str, overrides: dict[str, str]) -> str:
    """The endpoint's values as a JSON list: its defaults, with some replaced by raw JSON tokens (NaN...).

    Built from the endpoint's own description, so adding a parameter does not break the test.
    """
    parameters = client.view_api(return_format="dict", print_info=False)["named_endpoints"][f"/{api_name}"]
    values = [overrides.get(p["parameter_name"], json.dumps(p["parameter_default"]))
              for p in parameters["parameters"]]
    return "[" + ", ".join(values) + "]"


@pytest.mark.parametrize(
    ("api_name", "overrides", "message"),
    [
        ("train", {"partitioning": '"dirichlet"', "alpha": "NaN"}, "alpha must be a number"),
        ("train", {"differential_privacy": "true", "noise_multiplier": "Infinity"},
         "noise_multiplier must be a number"),
        ("train", {"num_clients": "NaN"}, "num_clients must be a whole number from 2 to 100, got nan"),
        ("train", {"num_rounds": "Infinity"}, "num_rounds must be a whole number from 1 to 100, got inf"),
        ("compile", {"n_bits": "NaN"}, "n_bits must be a whole number from 2 to 16, got nan"),
        ("compile", {"n_bits": "-Infinity"}, "n_bits must be a whole number from 2 to 16, got -inf"),
        ("evaluate_encrypted", {"num_samples": "NaN"}, "num_samples must be a whole number"),
    ],
)
def test_non_finite_values_get_clear_errors(launched_app, stateless_client, api_name, overrides, message):
    data = _raw_data(stateless_client, api_name, overrides)
    stream = raw_call(launched_app.url, api_name, f'{{"data": {data}}}')
    assert "event: error" in stream
    error = json.loads(stream.split("event: error\ndata: ", 1)[1].splitlines()[0])["error"]
    assert error and re.search(message, error), error


@pytest.mark.parametrize(("api_name", "data"), [("encrypt", "[3]"), ("train", '["digits"]')])
def test_too_few_values_get_gradio_s_clear_error(launched_app, api_name, data):
    stream = raw_call(launched_app.url, api_name, f'{{"data": {data}}}')
    assert "event: error" in stream
    error = json.loads(stream.split("event: error\ndata: ", 1)[1].splitlines()[0])["error"]
    assert re.search(r"didn't receive enough input values \(needed: \d+, got: 1\)", error), error


def test_the_whole_flow_through_the_api(client, launched_app):
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
    with pytest.raises(AppError, match="encrypt this input first"):
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


def test_another_session_sees_nothing_of_this_one(launched_app):
    stranger = Client(launched_app.url, verbose=False)
    with pytest.raises(AppError, match="No model yet"):
        stranger.predict(api_name="/decrypt")
