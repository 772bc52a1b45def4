"""A class model is compiled and deployed as soon as it is trained, before the room asks for it.

The moment after training is when thirty phones press *Use the class model* then *Compile*:
the compile must already be done (or under way) once, for everyone.
"""

from __future__ import annotations

import pytest

from fl_training.datasets import load_dataset
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


def test_the_class_model_is_compiled_once_ahead_and_every_participant_shares_it(registry):
    classes = registry.classes
    opened = classes.open("Ahead")
    dataset = load_dataset("mnist-5k")
    pupils = []
    for k in range(2):
        session = registry.new_session()
        session.join_class(opened["class_code"], f"kid{k}")
        for row in range(k * 10, k * 10 + 10):
            classes.rooms.add_drawing(opened["class_code"], session.seat[1], dataset.X_train[row],
                                      int(dataset.y_train[row]))
        pupils.append(session)
    compiles_before = registry.deployments.compiles
    items = list(classes.train(opened["class_code"], opened["teacher_key"], num_rounds=1))
    assert "accuracy_room" in items[-1]
    wait_for(lambda: registry.deployments.compiles == compiles_before + 1, "the class model's compile",
             timeout=240)
    for pupil in pupils:
        pupil.use_class_model_now()
        assert pupil.compile()["shared"] is True  # nobody compiles it again
    assert registry.deployments.compiles == compiles_before + 1

    classes.close(opened["class_code"], opened["teacher_key"])
    for pupil in pupils:
        pupil.close()
    assert len(registry.deployments) == 0  # the class and its participants gone: the deployment too
