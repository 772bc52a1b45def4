"""The class endpoints through ``gradio_client``: a teacher and two participants, errors included.

Training the class model with Flower is covered in ``tests/story/test_class_training.py``; here
every class action must be reachable as an endpoint, answer with its documented JSON, and refuse
wrong codes, wrong teacher keys, bad labels, blank drawings and too few participants with a
message that says what to do, changing nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from fl_training.datasets import load_dataset

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _sketch(tmp_path, digit_row: int | None) -> dict:
    """A sketchpad value: an MNIST training image drawn dark on a transparent canvas, or a blank one."""
    canvas = np.zeros((280, 280, 4), dtype=np.uint8)
    if digit_row is not None:
        image = load_dataset("mnist-5k").X_train[digit_row].reshape(28, 28).astype(np.uint8)
        canvas[..., 3] = np.asarray(Image.fromarray(image).resize((280, 280)))
    path = tmp_path / f"sketch-{digit_row}.png"
    Image.fromarray(canvas).save(path)
    return {"background": None, "layers": [], "composite": handle_file(str(path))}


def test_class_endpoints_have_the_documented_parameters(launched_app):
    api = Client(launched_app.url, verbose=False).view_api(return_format="dict", print_info=False)
    named = api["named_endpoints"]
    expected = {
        "/class_open": ["title"], "/class_join": ["class_code", "nickname"],
        "/class_add_drawing": ["drawing", "label"], "/class_leave": [], "/class_delete_drawings": [],
        "/class_status": ["teacher_key"],
        "/class_train": ["teacher_key", "num_rounds", "secure_aggregation", "differential_privacy"],
        "/class_use_model": [], "/class_compare": ["drawing"], "/class_export_drawings": [],
        "/class_progress": [],
    }
    for name, parameters in expected.items():
        assert [p["parameter_name"] for p in named[name]["parameters"]] == parameters, name


def test_a_teacher_and_two_participants_and_every_refusal(launched_app, tmp_path):
    teacher = Client(launched_app.url, verbose=False)
    opened = teacher.predict(title="Room 101", api_name="/class_open")[0]
    assert len(opened["class_code"]) <= 6 and opened["join_url"].endswith(f"?class={opened['class_code']}")
    ada, bob = Client(launched_app.url, verbose=False), Client(launched_app.url, verbose=False)
    with pytest.raises(AppError, match="No open class with code"):
        ada.predict(class_code="ZZZZZZ", nickname="ada", api_name="/class_join")
    typed = f" {opened['class_code'].lower()} "  # as typed off a projector, on a phone
    joined = ada.predict(class_code=typed, nickname="ada", api_name="/class_join")[0]
    assert joined["class_code"] == opened["class_code"] and joined["participant"] != "ada"
    bob.predict(class_code=opened["class_code"], nickname="bob", api_name="/class_join")
    with pytest.raises(AppError, match="nickname"):
        Client(launched_app.url, verbose=False).predict(class_code=opened["class_code"], nickname="ADA",
                                                        api_name="/class_join")

    added = ada.predict(drawing=_sketch(tmp_path, 0), label=5, api_name="/class_add_drawing")[0]
    assert added["drawings"] == 1 and added["per_label"][5] == 1
    with pytest.raises(AppError, match="label"):
        ada.predict(drawing=_sketch(tmp_path, 1), label=12, api_name="/class_add_drawing")
    with pytest.raises(AppError, match="blank"):
        ada.predict(drawing=_sketch(tmp_path, None), label=3, api_name="/class_add_drawing")
    with pytest.raises(AppError, match="Join a class first"):
        Client(launched_app.url, verbose=False).predict(drawing=_sketch(tmp_path, 1), label=1,
                                                        api_name="/class_add_drawing")

    status = teacher.predict(teacher_key=opened["teacher_key"], api_name="/class_status")[0]
    assert (status["participants"], status["drawings"]) == (2, 1)
    assert [p["nickname"] for p in status["per_participant"]] == ["ada", "bob"]
    with pytest.raises(AppError, match="teacher key"):
        bob.predict(teacher_key="guess", api_name="/class_status")
    with pytest.raises(AppError, match="at least 2 participants"):
        teacher.predict(teacher_key=opened["teacher_key"], api_name="/class_train")
    with pytest.raises(AppError, match="not trained yet"):
        ada.predict(api_name="/class_use_model")
    progress, shown = bob.predict(api_name="/class_progress")[:2]  # every phone's view: not who drew what
    assert progress["state"] == "collecting" and progress["participants"] == 2 and progress["rounds"] == []
    assert "per_participant" not in progress and "not trained yet" in shown
    assert Client(launched_app.url, verbose=False).predict(api_name="/class_progress")[0] == {}  # no seat

    left = ada.predict(api_name="/class_leave")[0]
    assert left["deleted_drawings"] == 1 and "deleted from the host" in left["message"]
    status = teacher.predict(teacher_key=opened["teacher_key"], api_name="/class_status")[0]
    assert (status["participants"], status["drawings"]) == (1, 0)
