"""A class in the room: a teacher opens it, participants join with a code and draw labelled digits.

The room is the federation: later, the teacher trains a class model with one
Flower client per participant, each on their own drawings. This module holds
the open classes and their drawings, in memory only, bounded and swept: a
class idle for :data:`CLASS_IDLE_TTL_SECONDS` is wiped with every drawing in
it. A participant holds an opaque id (never their nickname); the teacher
holds a secret key, the only way to read the class's status, its data or to
close it. Every refusal is a :class:`ClassroomError` that says what to do,
and leaves the classes as they were.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fl_training.drawings import DrawingError, drawing_to_features
from story.class_rules import (
    N_LABELS,
    ClassroomError,
    DrawingSummary,
    OpenedClass,
    Participant,
    check_label,
    check_nickname,
    check_pixels,
    check_title,
    class_dataset,
    free_nickname,
    new_class_code,
    next_label_to_draw,
    nickname_key,
    typed_code,
)

#: A lesson with its breaks fits; children's drawings do not outlive the lesson by long.
CLASS_IDLE_TTL_SECONDS = 3 * 3600.0
#: Classes open at once: a few rooms of a workshop. Each holds up to 60 x 200 drawings
#: (9.4 MB) and trains one Flower client per participant on a 2-vCPU machine: more rooms
#: could neither be held comfortably nor trained during a lesson.
MAX_OPEN_CLASSES = 8
#: Participants of one class: a large class, or two merged; one Flower client each, and a
#: federation of 60 simulated clients still trains within a lesson on 2 vCPUs.
MAX_PARTICIPANTS = 60
#: Drawings one participant keeps: 20 of each digit, more than a lesson draws; bounds a class's memory.
MAX_DRAWINGS_PER_PARTICIPANT = 200

NO_SUCH_CLASS = (
    "No open class with code {code!r}: check the code on the projector. A class closes after "
    "{hours:g} hours without activity; if yours did, ask your teacher to open a new class."
)
NOT_THE_TEACHER = (
    "That is not the teacher key of class {code}: only the teacher who opened the class can see "
    "its status, use its drawings or close it. Use the teacher link you got when you opened it."
)
NOT_A_PARTICIPANT = "You are not in class {code} any more: join it again with a nickname."

__all__ = ["ClassroomError", "Classrooms", "DrawingSummary", "OpenedClass", "Participant"]


@dataclass
class _Member:
    nickname: str
    features: list[np.ndarray] = field(default_factory=list)  # uint8 rows, one per drawing
    labels: list[int] = field(default_factory=list)
    per_label: list[int] = field(default_factory=lambda: [0] * N_LABELS)

    def summary(self) -> DrawingSummary:
        return DrawingSummary(len(self.labels), list(self.per_label), next_label_to_draw(self.per_label))

    def wipe(self) -> int:
        count = len(self.labels)
        self.features.clear()
        self.labels.clear()
        self.per_label[:] = [0] * N_LABELS
        return count


@dataclass
class _Room:
    code: str
    title: str
    teacher_key: str
    last_active: float
    members: dict[str, _Member] = field(default_factory=dict)  # by participant id, in joining order


class Classrooms:
    """The open classes of one app, by code: bounded, swept when idle, safe to share between threads.

    Parameters
    ----------
    max_classes, max_participants, max_drawings : int
        Bounds on open classes, participants per class and drawings per participant.
    idle_ttl_seconds : float
        A class unused for this long is wiped, drawings included (checked on every call).
    clock : callable
        Monotonic time source (injectable for tests).
    """

    def __init__(
        self,
        *,
        max_classes: int = MAX_OPEN_CLASSES,
        max_participants: int = MAX_PARTICIPANTS,
        max_drawings: int = MAX_DRAWINGS_PER_PARTICIPANT,
        idle_ttl_seconds: float = CLASS_IDLE_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.max_classes = max_classes
        self.max_participants = max_participants
        self.max_drawings = max_drawings
        self.idle_ttl_seconds = idle_ttl_seconds
        self._clock = clock
        self._rooms: dict[str, _Room] = {}
        # One lock for everything: every operation is a few list appends, and a bound
        # (e.g. drawings per participant) must hold however many tabs add at once.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """Classes open now (expired ones are wiped first)."""
        with self._lock:
            self._sweep()
            return len(self._rooms)

    # -- the teacher ------------------------------------------------------------------

    def open_class(self, title: str = "") -> OpenedClass:
        """Open a class.

        Parameters
        ----------
        title : str
            Shown on the projector; whitespace is tidied, blank gets :data:`DEFAULT_CLASS_TITLE`.

        Returns
        -------
        OpenedClass
            The code to project (and its join path) and the teacher's key.

        Raises
        ------
        ClassroomError
            If the title is too long or unprintable, or :attr:`max_classes` classes are open.
        """
        title = check_title(title)
        with self._lock:
            self._sweep()
            if len(self._rooms) >= self.max_classes:
                soonest = min(room.last_active for room in self._rooms.values()) + self.idle_ttl_seconds
                minutes = max(1, math.ceil((soonest - self._clock()) / 60))
                raise ClassroomError(
                    f"{self.max_classes} classes are open, the most this app holds at once. The next one "
                    f"closes in {minutes} minutes unless it is used (a class closes after "
                    f"{self.idle_ttl_seconds / 3600:g} hours without activity): try again then, or close "
                    "a class you no longer need."
                )
            code = new_class_code()
            for _ in range(100):  # a clash among a few open classes is very unlikely; 100 in a row is a bug
                if code not in self._rooms:
                    break
                code = new_class_code()
            else:
                raise RuntimeError("could not draw an unused class code")
            room = _Room(code, title, secrets.token_urlsafe(24), self._clock())
            self._rooms[code] = room
            return OpenedClass(code, title, room.teacher_key)

    def status(self, class_code: str, teacher_key: str) -> dict[str, Any]:
        """What the teacher's dashboard shows (JSON-friendly); reading it does not keep the class open.

        A dashboard left open polls this: it must not keep children's drawings beyond the TTL.

        Returns
        -------
        dict
            ``class_code``, ``title``, ``state`` (``"collecting"``), ``participants``, ``drawings``,
            ``per_label`` (room totals), ``per_participant`` (``nickname``, ``drawings``,
            ``per_label``, in joining order), ``rounds`` (empty until the class trains) and
            ``expires_in_seconds``.

        Raises
        ------
        ClassroomError
            If no class has this code or the key is not its teacher's (nothing is revealed).
        """
        with self._lock:
            room = self._teachers_room(class_code, teacher_key)
            members = list(room.members.values())
            return {
                "class_code": room.code,
                "title": room.title,
                "state": "collecting",
                "participants": len(members),
                "drawings": sum(len(m.labels) for m in members),
                "per_label": [sum(m.per_label[label] for m in members) for label in range(N_LABELS)],
                "per_participant": [{"nickname": m.nickname, "drawings": len(m.labels),
                                     "per_label": list(m.per_label)} for m in members],
                "rounds": [],
                "expires_in_seconds": max(0, math.ceil(room.last_active + self.idle_ttl_seconds
                                                       - self._clock())),
            }

    def participants_data(self, class_code: str, teacher_key: str
                          ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Each participant's drawings, for a class training (one Flower client per participant).

        Returns
        -------
        list of (participant_id, X, y)
            Copies: ``X`` of shape (n, 784) uint8, ``y`` of shape (n,) int64; only participants
            with at least one drawing, in joining order.

        Raises
        ------
        ClassroomError
            If no class has this code or the key is not its teacher's.
        """
        with self._lock:
            room = self._teachers_room(class_code, teacher_key)
            room.last_active = self._clock()  # training the class is the teacher at work, not a poll
            return [(pid, np.stack(m.features), np.array(m.labels, dtype=np.int64))
                    for pid, m in room.members.items() if m.labels]

    def class_of_teacher(self, teacher_key: str) -> str:
        """The code of the open class whose teacher key this is.

        Raises
        ------
        ClassroomError
            If no open class has this teacher key.
        """
        with self._lock:
            self._sweep()
            for room in self._rooms.values():
                if isinstance(teacher_key, str) and secrets.compare_digest(
                        room.teacher_key.encode(), teacher_key.encode()):
                    return room.code
        raise ClassroomError("No open class has this teacher key: open a class, or use the teacher link "
                             "you got when you opened yours.")

    def close_class(self, class_code: str, teacher_key: str) -> None:
        """Close a class at once: its participants and every drawing are deleted.

        Raises
        ------
        ClassroomError
            If no class has this code or the key is not its teacher's (nothing is closed).
        """
        with self._lock:
            room = self._teachers_room(class_code, teacher_key)
            self._wipe(room)

    # -- a participant -----------------------------------------------------------------

    def join(self, class_code: str, nickname: str) -> Participant:
        """Join a class with the code on the projector.

        Parameters
        ----------
        class_code : str
            Matched ignoring case and surrounding spaces.
        nickname : str
            1 to :data:`MAX_NICKNAME_LENGTH` printable characters, unique in the class (ignoring case).

        Returns
        -------
        Participant
            With the opaque ``participant_id`` every later call needs.

        Raises
        ------
        ClassroomError
            If there is no such class, it is full, or the nickname is blank, too long or taken.
        """
        nickname = check_nickname(nickname)
        with self._lock:
            room = self._room(class_code)
            taken = {nickname_key(m.nickname) for m in room.members.values()}
            if nickname_key(nickname) in taken:
                raise ClassroomError(f"Someone in this class is already called {nickname!r}: pick another "
                                     f"nickname, e.g. {free_nickname(nickname, taken)!r}.")
            if len(room.members) >= self.max_participants:
                raise ClassroomError(
                    f"Class {room.code} is full: it has {self.max_participants} participants, the most one "
                    "class trains with. Ask your teacher to open a second class."
                )
            participant_id = secrets.token_urlsafe(16)
            room.members[participant_id] = _Member(nickname)
            room.last_active = self._clock()
            return Participant(room.code, participant_id, nickname)

    def add_drawing(self, class_code: str, participant_id: str, features: np.ndarray, label: int
                    ) -> DrawingSummary:
        """Keep one labelled drawing of a participant.

        Parameters
        ----------
        class_code, participant_id : str
            From :meth:`join`.
        features : ndarray of shape (784,)
            Already prepared (:func:`fl_training.drawings.drawing_to_features`): finite, 0-255;
            stored rounded to uint8.
        label : int
            The digit drawn, 0-9.

        Returns
        -------
        DrawingSummary
            The participant's drawings after this one.

        Raises
        ------
        ClassroomError
            If the class or participant is unknown, the label is not 0-9, the features are not a
            784-vector of 0-255 or blank, or the participant has :attr:`max_drawings` drawings.
        """
        n_features = class_dataset().X_train.shape[1]  # outside the lock: the first call loads it
        with self._lock:
            room, member = self._member(class_code, participant_id)
            label, pixels = check_label(label), check_pixels(features, n_features)
            if len(member.labels) >= self.max_drawings:
                raise ClassroomError(
                    f"You have {self.max_drawings} drawings, the most one participant keeps: that is plenty "
                    "for the class model. Delete yours to start again."
                )
            member.features.append(pixels)
            member.labels.append(label)
            member.per_label[label] += 1
            room.last_active = self._clock()
            return member.summary()

    def add_sketch(self, class_code: str, participant_id: str, image: Any, label: int) -> DrawingSummary:
        """Keep one labelled sketchpad drawing, prepared like the class dataset's images.

        Same as :meth:`add_drawing`, with ``image`` as the sketchpad returns it (see
        :func:`fl_training.drawings.drawing_to_features`); a blank or broken image is refused.
        """
        with self._lock:
            self._member(class_code, participant_id)  # a wrong code says so before the image is prepared
        label = check_label(label)
        try:
            features = drawing_to_features(image, class_dataset())  # outside the lock: image work
        except DrawingError as exc:
            raise ClassroomError(str(exc)) from exc
        return self.add_drawing(class_code, participant_id, features, label)

    def summary(self, class_code: str, participant_id: str) -> DrawingSummary:
        """A participant's drawings so far, with the label to draw next (e.g. after a page reload)."""
        with self._lock:
            return self._member(class_code, participant_id)[1].summary()

    def is_open(self, class_code: str) -> bool:
        """True while the class is open (not closed, not expired)."""
        with self._lock:
            self._sweep()
            return typed_code(class_code) in self._rooms

    def size(self, class_code: str) -> int:
        """How many participants the class has."""
        with self._lock:
            return len(self._room(class_code).members)

    def nickname_of(self, class_code: str, participant_id: str) -> str:
        """A participant's nickname (for their own page, e.g. after a reload)."""
        with self._lock:
            return self._member(class_code, participant_id)[1].nickname

    def own_drawings(self, class_code: str, participant_id: str) -> tuple[str, np.ndarray, np.ndarray]:
        """A participant's nickname and drawings (copies), for their own export or side-by-side reading."""
        with self._lock:
            member = self._member(class_code, participant_id)[1]
            X = np.stack(member.features) if member.features else np.zeros((0, 0), dtype=np.uint8)
            return member.nickname, X, np.array(member.labels, dtype=np.int64)

    def nicknames(self, class_code: str, teacher_key: str) -> dict[str, str]:
        """Participant id → nickname, for the teacher's console."""
        with self._lock:
            room = self._teachers_room(class_code, teacher_key)
            return {pid: member.nickname for pid, member in room.members.items()}

    def next_label(self, class_code: str, participant_id: str) -> int:
        """The label a participant has drawn least (ties: the smallest): drawing it each time cycles 0-9."""
        return self.summary(class_code, participant_id).next_label

    def delete_drawings(self, class_code: str, participant_id: str) -> int:
        """Delete all of a participant's drawings at once (they stay in the class); returns how many."""
        with self._lock:
            room, member = self._member(class_code, participant_id)
            room.last_active = self._clock()
            return member.wipe()

    def leave(self, class_code: str, participant_id: str) -> int:
        """Leave a class: the participant and all their drawings are deleted at once; returns how many."""
        with self._lock:
            room, member = self._member(class_code, participant_id)
            del room.members[participant_id]
            room.last_active = self._clock()
            return member.wipe()

    # -- under the lock ----------------------------------------------------------------

    def _sweep(self) -> None:
        now = self._clock()
        for room in [r for r in self._rooms.values() if now - r.last_active >= self.idle_ttl_seconds]:
            self._wipe(room)

    def _wipe(self, room: _Room) -> None:
        # Clear the lists too, so that nothing still holding this room keeps a drawing alive.
        for member in room.members.values():
            member.wipe()
        room.members.clear()
        self._rooms.pop(room.code, None)

    def _room(self, class_code: Any) -> _Room:
        self._sweep()
        room = self._rooms.get(typed_code(class_code))
        if room is None:
            shown = class_code.strip() if isinstance(class_code, str) else class_code
            raise ClassroomError(NO_SUCH_CLASS.format(code=shown, hours=self.idle_ttl_seconds / 3600))
        return room

    def _teachers_room(self, class_code: Any, teacher_key: Any) -> _Room:
        room = self._room(class_code)
        given = teacher_key.encode() if isinstance(teacher_key, str) else b""
        if not secrets.compare_digest(given, room.teacher_key.encode()):
            raise ClassroomError(NOT_THE_TEACHER.format(code=room.code))
        return room

    def _member(self, class_code: Any, participant_id: Any) -> tuple[_Room, _Member]:
        room = self._room(class_code)
        member = room.members.get(participant_id) if isinstance(participant_id, str) else None
        if member is None:
            raise ClassroomError(NOT_A_PARTICIPANT.format(code=room.code))
        return room, member
