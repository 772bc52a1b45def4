"""One visitor's session: the four acts of the story on one shared state."""

from __future__ import annotations

from story.class_steps import ClassSteps
from story.compiling import CompileSteps
from story.evaluation import EvaluationSteps
from story.inference import InferenceSteps
from story.training import TrainingSteps


class DemoSession(TrainingSteps, CompileSteps, InferenceSteps, EvaluationSteps, ClassSteps):
    """Everything one visitor built, and the steps that build it.

    The steps, in the order of the story: :meth:`train` or
    :meth:`use_uploaded_model` (act 1), :meth:`compile` and
    :meth:`n_bits_sweep` (act 2), :meth:`generate_keys`, :meth:`encrypt`,
    :meth:`run_on_server`, :meth:`decrypt` and :meth:`decrypt_with_wrong_key`
    (act 3), :meth:`evaluate` (act 4); a class's actions (:class:`story.class_steps.ClassSteps`).
    Each refuses to run before the steps it
    needs, naming the missing one (:class:`story.errors.StepError`); one step
    runs at a time; :meth:`close` deletes everything, private key included.

    Parameters
    ----------
    server : FHEServerHandle
        The FHE server shared by all sessions.
    keys_root : path-like
        Parent of the sessions' private-key directories.
    work_root : path-like, optional
        Parent of the session's directory of downloadable files.
    """
