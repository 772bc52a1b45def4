"""Work budgets of the n_bits sweep and of the encrypted evaluation: refused at once, naming the bound.

No FHE server is contacted: both are refused before anything compiles or encrypts.
"""

from __future__ import annotations

import time

import pytest

from fhe_model.connection import FHEServerHandle
from fhe_model.developer import SWEEP_N_BITS, SWEEP_SAMPLES
from fl_training.validation import SettingError
from story import SessionRegistry, StepError
from story.compiling import MAX_SWEEP_WORK, MAX_SWEEP_WORK_ENV, check_sweep_work
from story.evaluation import MAX_EVALUATION_SAMPLES, MAX_EVALUATION_SAMPLES_ENV

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


@pytest.fixture()
def session(tmp_path):
    from fl_training.model_io import save_model
    from tests.helpers import fit_logistic

    registry = SessionRegistry(FHEServerHandle("http://127.0.0.1:9"), temp_dir=tmp_path)
    session = registry.new_session()
    session.use_uploaded_model(
        save_model(fit_logistic("digits", max_iter=50), tmp_path / "m.skops"), "digits"
    )
    yield session
    registry.close_all()


def test_the_apps_own_sweep_fits_its_budget(monkeypatch):
    monkeypatch.delenv(MAX_SWEEP_WORK_ENV, raising=False)
    check_sweep_work(len(SWEEP_N_BITS), SWEEP_SAMPLES)  # nothing raised
    with pytest.raises(SettingError, match=f"largest allowed is {MAX_SWEEP_WORK:,}"):
        check_sweep_work(2 * len(SWEEP_N_BITS) + 1, SWEEP_SAMPLES)


def test_a_sweep_past_its_budget_is_refused_before_any_compile(session, monkeypatch):
    monkeypatch.delenv(MAX_SWEEP_WORK_ENV, raising=False)
    compiled: list[int] = []
    start = time.monotonic()
    with pytest.raises(SettingError) as refused:
        session.n_bits_sweep(n_bits_values=(8,) * 40, samples=200, progress=lambda d, t: compiled.append(d))
    assert time.monotonic() - start < 1 and compiled == []
    message = str(refused.value)
    assert f"largest allowed is {MAX_SWEEP_WORK:,}" in message and f"{MAX_SWEEP_WORK_ENV}=20000" in message
    # A local run raises the bound.
    monkeypatch.setenv(MAX_SWEEP_WORK_ENV, "20000")
    check_sweep_work(40, 200)  # nothing raised


def test_an_evaluation_past_its_budget_is_refused_at_once_naming_the_bound(session, monkeypatch):
    monkeypatch.delenv(MAX_EVALUATION_SAMPLES_ENV, raising=False)
    start = time.monotonic()
    with pytest.raises(SettingError) as refused:
        session.evaluate(MAX_EVALUATION_SAMPLES + 1)
    assert time.monotonic() - start < 1
    message = str(refused.value)
    assert f"largest batch allowed is {MAX_EVALUATION_SAMPLES:,}" in message
    assert f"{MAX_EVALUATION_SAMPLES_ENV}={MAX_EVALUATION_SAMPLES + 1}" in message
    monkeypatch.setenv(MAX_EVALUATION_SAMPLES_ENV, "5000")
    # Within the raised budget, the batch meets the next rule: the test split's size (digits: 360).
    with pytest.raises(SettingError, match="num_samples"):
        session.evaluate(2000)
    with pytest.raises(StepError, match="not compiled yet"):  # within both: the step's own requirements
        session.evaluate(100)
    monkeypatch.setenv(MAX_EVALUATION_SAMPLES_ENV, "zero")
    with pytest.raises(ValueError, match=MAX_EVALUATION_SAMPLES_ENV):
        session.evaluate(10)
