"""Every class action, as the views and the API call them: the room is the federation.

A teacher opens a class and projects its code; participants join with a nickname,
draw labelled digits (each kept only in the class, deleted when they leave, when
the class closes or expires); the teacher trains the class model, one Flower
client per participant on their own drawings (:mod:`story.class_training`); each
participant can then make the class model their current model and go on through
compile, keys, encryption and decryption like any model, and see one of their own
new drawings read by the MNIST model and the class model side by side.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from fhe_model.developer import DEFAULT_N_BITS
from fl_training import local_data
from fl_training.config import TrainingConfig
from fl_training.drawings import DrawingError, drawing_to_features
from fl_training.preprocessing import model_inputs
from fl_training.simulation import TrainingResult
from story.class_rules import ClassroomError, class_dataset, typed_code
from story.class_training import ClassTrainings
from story.classroom import Classrooms
from story.shared_deployments import Lease, SharedDeployments
from story.shared_trainings import SharedTrainings

logger = logging.getLogger(__name__)

__all__ = ["Classes"]


class Classes:
    """The app's classes: their rooms (people and drawings) and their trainings.

    Parameters
    ----------
    trainings : SharedTrainings
        The app's trainings; the MNIST model a class starts from is ``mnist_config``'s run.
    mnist_config : TrainingConfig
        The app's default training (trained ahead at launch).
    root : path-like, optional
        Where class runs keep their files.
    rooms : Classrooms, optional
        The classes (bounds and clock), by default a new :class:`Classrooms`.
    deployments : SharedDeployments, optional
        The app's compiled deployments: a class model is compiled and deployed as soon as it is
        trained, before the room asks for it (the compile form's defaults), and kept while its
        class lasts. Without it, the first participant's compile does it.
    """

    def __init__(self, trainings: SharedTrainings, mnist_config: TrainingConfig,
                 root: str | Path | None = None, rooms: Classrooms | None = None,
                 deployments: SharedDeployments | None = None):
        self._shared = trainings
        self._mnist_config = mnist_config
        self._mnist: LogisticRegression | None = None
        self._mnist_lock = threading.Lock()
        self.rooms = rooms or Classrooms()
        self.trainings = ClassTrainings(self.mnist_model, root)
        self._deployments = deployments
        self._ahead: dict[str, Lease] = {}  # class code → the deployment of its class model
        self._ahead_lock = threading.Lock()

    def mnist_model(self) -> LogisticRegression:
        """The app's MNIST model (the default training's; trained now if the launch has not finished it)."""
        with self._mnist_lock:
            if self._mnist is None:
                result = self._shared.cached(self._mnist_config)
                if result is None:
                    for item in self._shared.stream(self._mnist_config):
                        result = item if isinstance(item, TrainingResult) else result
                if result is None:
                    raise ClassroomError("The app's MNIST model is not ready; try again in a moment.")
                self._mnist = result.model
            return self._mnist

    # -- the teacher ---------------------------------------------------------------------

    def open(self, title: str = "") -> dict[str, Any]:
        """``class_code``, ``title``, ``teacher_key``, ``join_path`` (append it to the app's address)."""
        opened = self.rooms.open_class(title)
        return {"class_code": opened.class_code, "title": opened.title, "teacher_key": opened.teacher_key,
                "join_path": opened.join_path}

    def status(self, class_code: str, teacher_key: str) -> dict[str, Any]:
        """The console's view: people, drawings, labels, and the class run's state and rounds."""
        status = self.rooms.status(class_code, teacher_key)
        run = self.trainings.run_of(status["class_code"])
        if run is not None:
            status["state"] = run.state
            status["rounds"] = list(run.rounds)
            status["left_during_training"] = list(run.left)
            if run.summary is not None:
                status["result"] = {k: v for k, v in run.summary.items() if k != "history"}
        return status

    def train(self, class_code: str, teacher_key: str, **settings: Any) -> Iterator[Any]:
        """Train the class model (see :meth:`story.class_training.ClassTrainings.train`)."""
        data = self.rooms.participants_data(class_code, teacher_key)  # checks the teacher key
        nicknames = self.rooms.nicknames(class_code, teacher_key)
        code = self._code_of(class_code)
        rows = [(pid, nicknames.get(pid, "?"), X, y) for pid, X, y in data]
        yield from self.trainings.train(code, rows, **settings)
        run = self.trainings.run_of(code)
        if run is not None and run.model is not None and self._deployments is not None:
            threading.Thread(target=self._deploy_ahead, args=(code, run.model), daemon=True,
                             name=f"class-deployment-{code}").start()

    def _deploy_ahead(self, code: str, model: LogisticRegression) -> None:
        """Compile and deploy a fresh class model while the room reads its result (one compile for all)."""
        try:
            lease = self._deployments.acquire(model, class_dataset(), DEFAULT_N_BITS, "data")
        except Exception:  # the first participant's own compile meets (and reports) the same problem
            logger.warning("could not compile class %s's model ahead of the room", code, exc_info=True)
            return
        with self._ahead_lock:
            previous = self._ahead.pop(code, None)
            self._ahead[code] = lease
            gone = [c for c in self._ahead if not self.rooms.is_open(c)]
            released = [previous] + [self._ahead.pop(c) for c in gone]
        for old in released:
            if old is not None:
                old.release()
        try:
            self._deployments.server.start()
            lease.remote.ensure()  # the FHE server loads it before the room's first key upload
        except Exception:
            logger.warning("could not deploy class %s's model ahead of the room", code, exc_info=True)

    def _release_ahead(self, code: str | None = None) -> None:
        with self._ahead_lock:
            leases = list(self._ahead.values()) if code is None else [self._ahead.pop(code, None)]
            if code is None:
                self._ahead.clear()
        for lease in leases:
            if lease is not None:
                lease.release()

    def close(self, class_code: str, teacher_key: str) -> None:
        """Close the class: people, drawings, runs and the class model are deleted."""
        self.rooms.close_class(class_code, teacher_key)  # checks the teacher key
        code = self._code_of(class_code)
        self.trainings.close(code)
        self._release_ahead(code)

    # -- a participant -------------------------------------------------------------------

    def join(self, class_code: str, nickname: str) -> dict[str, Any]:
        """``class_code``, ``participant`` (an opaque id), ``nickname``, ``participants`` (how many)."""
        joined = self.rooms.join(class_code, nickname)
        return {"class_code": joined.class_code, "participant": joined.participant_id,
                "nickname": joined.nickname, "next_label": 0}

    def seat(self, class_code: str, participant_id: str) -> dict[str, Any]:
        """A participant's view: ``class_code``, ``nickname``, ``drawings``, ``per_label``, ``next_label``."""
        nickname = self.rooms.nickname_of(class_code, participant_id)
        summary = self.rooms.summary(class_code, participant_id)
        return {"class_code": self._code_of(class_code), "nickname": nickname, "drawings": summary.drawings,
                "per_label": summary.per_label, "next_label": summary.next_label}

    def run_view(self, class_code: str, participant_id: str) -> dict[str, Any]:
        """The class run as every participant sees it, round by round: ``state`` (``"collecting"`` before
        any run), ``participants``, ``rounds``, ``left_during_training``, ``result`` (None until trained).

        The room's size only: who drew what stays on the teacher's console.
        """
        seat = self.seat(class_code, participant_id)
        view: dict[str, Any] = {"class_code": seat["class_code"], "state": "collecting", "rounds": [],
                                "left_during_training": [], "result": None,
                                "participants": self.rooms.size(class_code)}
        run = self.trainings.run_of(seat["class_code"])
        if run is not None:
            view.update(state=run.state, rounds=list(run.rounds), left_during_training=list(run.left))
            if run.summary is not None:
                view["result"] = {k: v for k, v in run.summary.items() if k != "history"}
        return view

    def add_drawing(self, class_code: str, participant_id: str, drawing: Any, label: Any) -> dict[str, Any]:
        """Keep one labelled drawing: ``drawings``, ``per_label``, ``next_label``."""
        summary = self.rooms.add_sketch(class_code, participant_id, drawing, label)
        return {"drawings": summary.drawings, "per_label": summary.per_label,
                "next_label": summary.next_label}

    def delete_drawings(self, class_code: str, participant_id: str) -> dict[str, Any]:
        deleted = self.rooms.delete_drawings(class_code, participant_id)
        return {"deleted_drawings": deleted,
                "message": f"Deleted your {deleted} drawing(s) from the host; you are still in the class."}

    def leave(self, class_code: str, participant_id: str) -> dict[str, Any]:
        """Leave: the participant and their drawings are deleted at once, a run in progress drops them."""
        code = self._code_of(class_code)
        deleted = self.rooms.leave(class_code, participant_id)
        in_run = self.trainings.forget(code, participant_id)
        message = f"You left class {code}: your {deleted} drawing(s) were deleted from the host."
        if in_run:
            message += " The training under way goes on without you from its next round."
        return {"deleted_drawings": deleted, "message": message}

    def export_drawings(self, class_code: str, participant_id: str) -> bytes:
        """The participant's drawings as a file their own Flower SuperNode can train on."""
        _nickname, X, y = self.rooms.own_drawings(class_code, participant_id)
        if len(y) < local_data.MIN_DRAWINGS:
            raise ClassroomError(f"Draw at least {local_data.MIN_DRAWINGS} digits before exporting them.")
        return local_data.drawings_bytes(X, y, class_dataset())

    def class_model(self, class_code: str, participant_id: str) -> tuple[LogisticRegression, dict[str, Any]]:
        """The class's trained model and its summary, for a participant of the class."""
        self.rooms.summary(class_code, participant_id)  # a participant of this class
        run = self.trainings.run_of(self._code_of(class_code))
        if run is None or run.model is None:
            raise ClassroomError("The class model is not trained yet: wait for the teacher's training.")
        return run.model, dict(run.summary or {})

    def compare(self, class_code: str, participant_id: str, drawing: Any) -> dict[str, Any]:
        """A new drawing read by the MNIST model and by the class model, side by side."""
        model, _ = self.class_model(class_code, participant_id)
        try:
            x = drawing_to_features(drawing, class_dataset())[None, :]
        except DrawingError as exc:
            raise ClassroomError(str(exc)) from exc
        mnist = self.mnist_model()
        # Each model reads the drawing preprocessed as it records (e.g. deskewed).
        x_mnist, x_class = (model_inputs(m, x, class_dataset()) for m in (mnist, model))
        return {
            "mnist_prediction": int(mnist.predict(x_mnist)[0]),
            "class_prediction": int(model.predict(x_class)[0]),
            "mnist_probabilities": np.round(mnist.predict_proba(x_mnist)[0], 4).tolist(),
            "class_probabilities": np.round(model.predict_proba(x_class)[0], 4).tolist(),
        }

    def close_all(self) -> None:
        self.trainings.close_all()
        self._release_ahead()

    def _code_of(self, class_code: Any) -> str:
        return typed_code(class_code)

