"""The visitor's story: one session's walk through the demo, without any UI.

A visitor trains (or uploads) a model, compiles it, generates keys, encrypts a
sample, has the server compute on it, decrypts the result and evaluates many
samples. :class:`DemoSession` holds what one visitor built and runs those
steps in order; :class:`SessionRegistry` holds the sessions of a running app.
Nothing here imports gradio: a test, a notebook or another UI can drive it.

>>> from fhe_model.connection import FHEServerHandle
>>> from fl_training.config import TrainingConfig
>>> registry = SessionRegistry(FHEServerHandle())           # doctest: +SKIP
>>> session = registry.new_session()                         # doctest: +SKIP
>>> *rounds, summary = session.train(TrainingConfig(dataset="digits"))  # doctest: +SKIP
>>> session.compile(n_bits=8); session.generate_keys()       # doctest: +SKIP
"""

from fl_training.runtime import QueueStatus
from story.errors import USER_ERRORS, StepError
from story.registry import DEFAULT_IDLE_TTL_SECONDS, SessionRegistry
from story.session import DemoSession
from story.shared_trainings import Joined
from story.stages import Baseline, Progress

__all__ = [
    "USER_ERRORS",
    "DEFAULT_IDLE_TTL_SECONDS",
    "Baseline",
    "DemoSession",
    "Joined",
    "Progress",
    "QueueStatus",
    "SessionRegistry",
    "StepError",
]
