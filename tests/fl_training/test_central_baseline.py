"""The centrally trained baseline that tab 1 compares a federated model with is computed once per dataset."""

from __future__ import annotations

import threading

from fl_training import task


def test_the_central_baseline_is_computed_once_for_callers_who_ask_at_once(monkeypatch):
    trainings = []
    real = task.train_centralized

    def counted(*args, **kwargs):
        trainings.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(task, "train_centralized", counted)
    monkeypatch.setattr(task, "_baselines", {})
    answers: list[float] = []
    threads = [threading.Thread(target=lambda: answers.append(task.baseline_accuracy("digits")))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(trainings) == 1
    assert len(answers) == 4 and len(set(answers)) == 1 and 0.9 < answers[0] <= 1.0
