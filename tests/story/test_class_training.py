"""The room is the federation: a class model trained by Flower, one client per participant's drawings.

Runs Flower's simulation (with SecAgg+) on the app's warm runtime, starting from a small
MNIST model; the participants' "drawings" are MNIST training images sent in as features,
so the test needs no renderer.
"""

from __future__ import annotations

import numpy as np
import pytest

from fl_training import local_data
from fl_training.config import TrainingConfig
from fl_training.datasets import load_dataset
from fl_training.validation import SettingError
from story.class_rules import ClassroomError
from story.classes import Classes
from story.shared_trainings import SharedTrainings

pytestmark = pytest.mark.slow

MNIST = TrainingConfig(num_clients=2, num_rounds=1)


@pytest.fixture(scope="module")
def classes(tmp_path_factory):
    classes = Classes(SharedTrainings(), MNIST, root=tmp_path_factory.mktemp("classes"))
    yield classes
    classes.close_all()


def _fill(classes: Classes, participants: int, per_participant: int, seed: int = 0):
    dataset = load_dataset("mnist-5k")
    opened = classes.open("Test class")
    rng = np.random.default_rng(seed)
    ids = []
    for k in range(participants):
        pid = classes.join(opened["class_code"], f"kid{k}")["participant"]
        for row in rng.choice(len(dataset.y_train), per_participant, replace=False):
            classes.rooms.add_drawing(opened["class_code"], pid, dataset.X_train[row],
                                      int(dataset.y_train[row]))
        ids.append(pid)
    return opened, ids


def test_a_class_model_trains_on_the_participants_drawings_and_reports_before_and_after(classes):
    opened, ids = _fill(classes, 3, 12)
    assert classes.run_view(opened["class_code"], ids[1])["state"] == "collecting"
    items = []
    for item in classes.train(opened["class_code"], opened["teacher_key"], num_rounds=2):
        items.append(item)
        if isinstance(item, dict) and item.get("round") == 1:  # every participant's page, mid-run
            view = classes.run_view(opened["class_code"], ids[1])
            assert view["state"] == "training" and [r["round"] for r in view["rounds"]] == [0, 1]
    rounds = [i for i in items if isinstance(i, dict) and "round" in i]
    summary = items[-1]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert summary["clients"] == 3 and summary["secure_aggregation"] is True
    assert summary["held_back_drawings"] == 3 * round(12 * local_data.DRAWINGS_VALIDATION_FRACTION)
    for key in ("accuracy_room_before", "accuracy_room", "accuracy_test_before", "accuracy_test"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["accuracy_test"] > 0.5  # started from the MNIST model, it still reads MNIST
    status = classes.status(opened["class_code"], opened["teacher_key"])
    assert status["state"] == "trained" and len(status["rounds"]) == 3
    view = classes.run_view(opened["class_code"], ids[2])
    assert view["state"] == "trained" and view["result"]["accuracy_room"] == summary["accuracy_room"]
    assert "history" not in view["result"] and "per_participant" not in view
    # The run's copies of the drawings are gone; the class keeps its own until people leave.
    run = classes.trainings.run_of(opened["class_code"])
    assert not list(run.directory.glob("*.npz"))
    model, _ = classes.class_model(opened["class_code"], ids[0])
    compared = classes.compare(opened["class_code"], ids[0], _sketch())
    assert set(compared) >= {"mnist_prediction", "class_prediction"}
    assert model.coef_.shape == (10, 784)


def test_a_participant_who_leaves_mid_run_is_dropped_and_their_drawings_are_gone(classes):
    opened, ids = _fill(classes, 4, 10, seed=1)
    stream = classes.train(opened["class_code"], opened["teacher_key"], num_rounds=3)
    seen = []
    for item in stream:
        seen.append(item)
        if isinstance(item, dict) and item.get("round") == 1:
            left = classes.leave(opened["class_code"], ids[0])
            assert left["deleted_drawings"] == 10 and "goes on without you" in left["message"]
            run = classes.trainings.run_of(opened["class_code"])
            assert not local_data.client_file(run.directory, 0).exists()
    summary = seen[-1]
    assert summary["dropped_clients"] >= 1 and summary["left"] == ["kid0"]
    assert [r["round"] for r in summary["history"]] == [0, 1, 2, 3]
    assert classes.status(opened["class_code"], opened["teacher_key"])["participants"] == 3


def test_training_refuses_too_few_participants_a_wrong_key_and_bad_settings(classes):
    opened, ids = _fill(classes, 1, 5, seed=2)
    with pytest.raises(ClassroomError, match="at least 2 participants"):
        list(classes.train(opened["class_code"], opened["teacher_key"]))
    with pytest.raises(ClassroomError, match="teacher key"):
        list(classes.train(opened["class_code"], "not-the-key"))
    with pytest.raises(SettingError, match="num_rounds"):
        list(classes.train(opened["class_code"], opened["teacher_key"], num_rounds=500))
    with pytest.raises(ClassroomError, match="not trained yet"):
        classes.class_model(opened["class_code"], ids[0])


def _sketch() -> np.ndarray:
    image = np.zeros((200, 200, 4), dtype=np.uint8)
    image[40:160, 95:105, 3] = 255  # a "1"
    return image
