"""A class's vocabulary: what it accepts (code, title, nickname, label, drawing), what it hands back.

:mod:`story.classroom` holds the open classes; every value that reaches it is
checked here, once, and refused with a :class:`ClassroomError` whose message
says what to do. The records it returns are defined here too.
"""

from __future__ import annotations

import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any

import numpy as np

from fl_training.datasets import Dataset, load_dataset
from fl_training.validation import SettingError, Whole
from story.errors import StepError

#: Letters and digits read aloud or copied from a projector without doubt: no 0/O, 1/I/L.
CLASS_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
#: 31**6 ≈ 8.9e8 codes: someone guessing any of a few open classes needs ~1e8 tries.
CLASS_CODE_LENGTH = 6
#: The query parameter of the join link (``?class=CODE``) the UI turns into a URL and a QR code.
JOIN_QUERY_PARAMETER = "class"
#: Longest class title (one line of a projected heading), and the title a blank one gets.
MAX_TITLE_LENGTH = 60
DEFAULT_CLASS_TITLE = "Our class"
#: Longest nickname (one row of the teacher's table).
MAX_NICKNAME_LENGTH = 24
#: The dataset a class draws samples of: 28 x 28 pixels 0-255, kept as uint8 (784 bytes a drawing).
CLASS_DATASET = "mnist-5k"
#: The label of a drawing: the digit drawn.
LABEL = Whole(0, 9)
N_LABELS = LABEL.high - LABEL.low + 1


class ClassroomError(StepError):
    """A class, a participant or a drawing is refused; the message says what to do, nothing changed."""


@dataclass(frozen=True)
class OpenedClass:
    """What the teacher gets on opening a class: the code to project, and the key to keep."""

    class_code: str
    title: str
    #: The teacher's secret: status, data and closing need it. Never shown to participants.
    teacher_key: str

    @property
    def join_path(self) -> str:
        """The query string of the join link, e.g. ``?class=K7QX2M`` (the UI adds the page's URL)."""
        return join_path(self.class_code)


def join_path(class_code: str) -> str:
    """The query string of a class's join link, e.g. ``?class=K7QX2M`` (the UI adds the page's URL)."""
    return f"?{JOIN_QUERY_PARAMETER}={class_code}"


@dataclass(frozen=True)
class Participant:
    """A participant of a class: their opaque id (the handle to their drawings) and nickname."""

    class_code: str
    participant_id: str
    nickname: str


@dataclass(frozen=True)
class DrawingSummary:
    """A participant's drawings: how many, how many of each label, and which label to draw next."""

    drawings: int
    per_label: list[int]
    next_label: int


def new_class_code() -> str:
    """A random class code of :data:`CLASS_CODE_LENGTH` characters from :data:`CLASS_CODE_ALPHABET`."""
    return "".join(secrets.choice(CLASS_CODE_ALPHABET) for _ in range(CLASS_CODE_LENGTH))


def typed_code(class_code: Any) -> str:
    """A code as typed, matched ignoring case and surrounding spaces (``""`` if not text)."""
    return class_code.strip().upper() if isinstance(class_code, str) else ""


def class_dataset() -> Dataset:
    """The dataset a class's drawings are samples of (:data:`CLASS_DATASET`, cached after the first load)."""
    return load_dataset(CLASS_DATASET)


def _one_line(text: Any, what: str, max_length: int) -> str:
    """``text`` with surrounding and repeated whitespace removed; refused if unprintable or too long."""
    if not isinstance(text, str):
        raise ClassroomError(f"The {what} must be text, got {type(text).__name__}.")
    text = " ".join(text.split())
    if len(text) > max_length:
        raise ClassroomError(f"The {what} must be at most {max_length} characters, got {len(text)}: "
                             "type a shorter one.")
    if not text.isprintable():
        raise ClassroomError(f"The {what} may only hold printable characters: type it again.")
    return text


def check_title(title: Any) -> str:
    """A class title, tidied; blank gets :data:`DEFAULT_CLASS_TITLE`.

    Raises
    ------
    ClassroomError
        If it is not text, unprintable or longer than :data:`MAX_TITLE_LENGTH`.
    """
    return _one_line(title, "class title", MAX_TITLE_LENGTH) or DEFAULT_CLASS_TITLE


def check_nickname(nickname: Any) -> str:
    """A nickname, tidied: 1 to :data:`MAX_NICKNAME_LENGTH` printable characters.

    Raises
    ------
    ClassroomError
        If it is not text, blank, unprintable or too long.
    """
    nickname = _one_line(nickname, "nickname", MAX_NICKNAME_LENGTH)
    if not nickname:
        raise ClassroomError("Type a nickname to join (any name your class will recognise).")
    return nickname


def nickname_key(nickname: str) -> str:
    """What two nicknames must not share in one class."""
    # "Zoë" typed two ways, and "ADA" / "ada", are the same name on the projector.
    return unicodedata.normalize("NFKC", nickname).casefold()


def free_nickname(nickname: str, taken: set[str]) -> str:
    """``nickname`` with the smallest number from 2 that is not ``taken`` (keys), within the length bound."""
    n = 2
    while nickname_key(candidate := f"{nickname[:MAX_NICKNAME_LENGTH - len(str(n))]}{n}") in taken:
        n += 1
    return candidate


def check_label(label: Any) -> int:
    """A drawing's label as an int.

    Raises
    ------
    ClassroomError
        Unless it is a whole number 0-9 (``3.0`` is; ``True``, ``"3"`` and ``3.5`` are not).
    """
    try:
        return LABEL.check("label", label)
    except SettingError as exc:
        raise ClassroomError(f"{exc} Pick the digit you drew.") from exc


def check_pixels(features: Any, n_features: int) -> np.ndarray:
    """Prepared features as compact uint8 pixels (rounded).

    Parameters
    ----------
    features : array-like of shape (n_features,)
        Raw features of the class dataset (:func:`fl_training.drawings.drawing_to_features`).
    n_features : int
        The dataset's number of features.

    Raises
    ------
    ClassroomError
        If it is not a vector of ``n_features`` finite values in 0-255, or blank (all 0 once rounded).
    """
    try:
        values = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ClassroomError("A drawing must be an array of pixel values: draw it again.") from exc
    if values.shape != (n_features,):
        raise ClassroomError(f"A drawing must be a vector of {n_features} pixel values, got shape "
                             f"{values.shape}: draw it again.")
    if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 255:
        raise ClassroomError("A drawing's pixel values must be numbers from 0 to 255 (no NaN or infinity): "
                             "draw it again.")
    pixels = np.rint(values).astype(np.uint8)
    if not pixels.any():
        raise ClassroomError("The drawing is blank: draw a digit on the sketchpad first.")
    return pixels


def next_label_to_draw(per_label: list[int]) -> int:
    """The label drawn least so far (ties: the smallest), so that drawing it each time cycles 0-9."""
    return int(np.argmin(per_label))
