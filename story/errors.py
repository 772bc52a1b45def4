"""The story's own error (a step that cannot run yet, an ended session); errors a visitor can act on."""

from __future__ import annotations

from fhe_model.client import FHEClientError
from fhe_model.http_client import FHEServerError
from fl_training.datasets import DatasetUnavailableError
from fl_training.drawings import DrawingError
from fl_training.local_data import DrawingsFileError
from fl_training.model_io import ModelFileError
from fl_training.validation import SettingError


class StepError(ValueError):
    """A step cannot run: a previous step is missing, another step is running, or the session ended.

    The message says what to do; the session is unchanged. Invalid values are
    refused by the module that owns the rule, with its own error (e.g.
    :class:`fl_training.validation.SettingError`).
    """


SESSION_ENDED = (
    "This session has ended (the tab was closed or stayed idle too long) and its keys "
    "were deleted. Reload the page to start again."
)
SESSION_RECLAIMED = (
    "This session was closed to make room for another visitor: the demo was full and it had been "
    "idle for several minutes; its keys were deleted. Reload the page to start again."
)

#: What each missing step tells the visitor to do, in the order of the story.
NEEDS_MODEL = (
    "No model yet: train one in tab 1 (Federated training → Start federated training) "
    "or upload a .skops model there first."
)
NO_MODEL_FILE = "No file: choose a .skops model file to upload."
NEEDS_COMPILE = "The model is not compiled yet: run tab 2 (Convert & compile → Compile) first."
NEEDS_KEYS = "No keys yet: run step ① Key generation first."
NEEDS_ENCRYPTION = "Nothing is encrypted for this input yet: encrypt this input first (step ② Encryption)."
NEEDS_SERVER_RUN = "The server has not computed anything yet: run step ③ FHE execution first."


#: Errors whose message tells the visitor what to do, each raised by the module that owns the rule:
#: a missing step (the story), a setting out of range, a model file, a drawing, a dataset that needs
#: a download, the FHE server, Concrete on the client side. Anything else is unexpected.
USER_ERRORS: tuple[type[Exception], ...] = (
    StepError, SettingError, ModelFileError, DrawingError, DrawingsFileError, DatasetUnavailableError,
    FHEServerError, FHEClientError,
)

__all__ = ["USER_ERRORS", "DrawingError", "SettingError", "StepError"]
