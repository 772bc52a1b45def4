"""A session's part in a class: the teacher's console, or a participant's seat and drawings.

The session keeps only which class it teaches (and that class's teacher key) or
which seat it holds (class code and an opaque participant id): never in the
browser. Everything else lives in the app's :class:`story.classes.Classes`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from story.base import SessionCore
from story.class_rules import ClassroomError, join_path
from story.classes import Classes

NOT_JOINED = "Join a class first: type the code on the projector and a nickname, then press Join."
NOT_TEACHING = "Open a class first (or pass its teacher key): only its teacher can do this."


class ClassSteps(SessionCore):
    """The class actions of one page: :meth:`open_class`, :meth:`join_class`, :meth:`add_class_drawing`,
    :meth:`leave_class`, :meth:`class_status`, :meth:`train_class`, :meth:`use_class_model_now`."""

    #: (class code, teacher key) of the class this page opened.
    teaching: tuple[str, str] | None = None
    #: (class code, participant id) of this page's seat in a class.
    seat: tuple[str, str] | None = None

    @property
    def classes(self) -> Classes:
        """The app's classes (a session made outside an app's registry has none)."""
        if self._classes is None:
            raise ClassroomError("Classes need the app: this session was made without its registry.")
        return self._classes

    # -- a page reload ------------------------------------------------------------------

    def has_place(self) -> bool:
        """True if this page teaches a class or holds a seat in one (a reload keeps both)."""
        return self.teaching is not None or self.seat is not None

    def park(self) -> bool:
        """As :meth:`story.base.SessionCore.park`; a page in a class is parked even without a model."""
        if self.model is not None:
            return super().park()
        return not self.closed and self.has_place()

    def resumable(self) -> bool:
        return super().resumable() or self.has_place()

    def resume_from(self, previous: SessionCore) -> bool:
        """Take over the previous page's model (see the base class) and its class console or seat."""
        resumed = super().resume_from(previous)
        if isinstance(previous, ClassSteps) and previous.has_place() and not self.has_place():
            self.teaching, self.seat = previous.teaching, previous.seat
            return True
        return resumed

    def class_place(self) -> dict[str, Any]:
        """What the Classroom tab shows again after a reload.

        ``teaching`` (``class_code``, ``teacher_key``, ``join_path``) and ``seat``
        (:meth:`story.classes.Classes.seat`), each None when this page has none;
        a class that expired or closed meanwhile is forgotten here.
        """
        place: dict[str, Any] = {"teaching": None, "seat": None}
        if self._classes is None:
            return place
        if self.teaching is not None:
            code, key = self.teaching
            try:
                self.classes.rooms.class_of_teacher(key)
                place["teaching"] = {"class_code": code, "teacher_key": key,
                                     "join_path": join_path(code)}
            except ClassroomError:
                self.teaching = None
        if self.seat is not None:
            try:
                place["seat"] = self.classes.seat(*self.seat)
            except ClassroomError:
                self.seat = None
        return place

    # -- the teacher -------------------------------------------------------------------

    def open_class(self, title: str = "") -> dict[str, Any]:
        """Open a class; this page becomes its teacher's (``class_code``, ``teacher_key``, ``join_path``)."""
        opened = self.classes.open(title)
        self.teaching = (opened["class_code"], opened["teacher_key"])
        return opened

    def class_status(self, teacher_key: str = "") -> dict[str, Any]:
        """The console: people, drawings, labels, the class run (this page's class, or ``teacher_key``'s)."""
        return self.classes.status(*self._teacher(teacher_key))

    def train_class(self, teacher_key: str = "", **settings: Any) -> Iterator[Any]:
        """Train the class model (see :meth:`story.classes.Classes.train`)."""
        yield from self.classes.train(*self._teacher(teacher_key), **settings)

    def close_class(self, teacher_key: str = "") -> dict[str, Any]:
        code, key = self._teacher(teacher_key)
        self.classes.close(code, key)
        if self.teaching is not None and self.teaching[0] == code:
            self.teaching = None
        return {"class_code": code, "closed": True}

    def _teacher(self, teacher_key: str) -> tuple[str, str]:
        if teacher_key:
            return self.classes.rooms.class_of_teacher(teacher_key), teacher_key
        if self.teaching is None:
            raise ClassroomError(NOT_TEACHING)
        return self.teaching

    # -- a participant -----------------------------------------------------------------

    def join_class(self, class_code: str, nickname: str) -> dict[str, Any]:
        """Take a seat in a class (leaving this page's previous seat and its drawings first)."""
        joined = self.classes.join(class_code, nickname)
        if self.seat is not None:
            try:
                self.classes.leave(*self.seat)
            except ClassroomError:
                pass  # that class expired or closed meanwhile
        self.seat = (joined["class_code"], joined["participant"])
        return joined

    def add_class_drawing(self, drawing: Any, label: Any) -> dict[str, Any]:
        """Keep one labelled drawing in this page's class (``drawings``, ``per_label``, ``next_label``)."""
        return self.classes.add_drawing(*self._seat(), drawing, label)

    def delete_class_drawings(self) -> dict[str, Any]:
        return self.classes.delete_drawings(*self._seat())

    def class_progress(self) -> dict[str, Any]:
        """The class run, round by round, as this participant sees it (see :meth:`Classes.run_view`)."""
        return self.classes.run_view(*self._seat())

    def leave_class(self) -> dict[str, Any]:
        """Leave the class: this participant and their drawings are deleted from the host at once."""
        left = self.classes.leave(*self._seat())
        self.seat = None
        return left

    def export_class_drawings(self) -> Path:
        """This participant's drawings as a file for their own Flower SuperNode (in the session's files)."""
        data = self.classes.export_drawings(*self._seat())
        path = self._new_public_dir() / "my-drawings.npz"
        path.write_bytes(data)
        return path

    def use_class_model_now(self) -> dict[str, Any]:
        """Make the class model this session's current model (then compile, keys, … as with any model)."""
        model, summary = self.classes.class_model(*self._seat())
        return self.use_class_model(model, summary)

    def compare_class_models(self, drawing: Any) -> dict[str, Any]:
        """A new drawing read by the MNIST model and by the class model, side by side."""
        return self.classes.compare(*self._seat(), drawing)

    def _seat(self) -> tuple[str, str]:
        if self.seat is None:
            raise ClassroomError(NOT_JOINED)
        return self.seat
