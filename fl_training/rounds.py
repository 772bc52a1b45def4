"""What the server knows after each round, with or without secure aggregation.

Server role. :class:`RoundReporter` scores every round's global model on the
server's held-out test split and turns it, with the clients' own evaluation,
the privacy spent and what :class:`fl_training.federation.FederationGrid` saw
arrive, into one :class:`RoundRecord`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from fl_training.datasets import Dataset
from fl_training.federation import FederationGrid, ReceivedUpdate
from fl_training.preprocessing import RAW, dataset_features
from fl_training.task import evaluate, export_model, initial_parameters

#: δ at which ε is reported for differentially private runs.
DP_DELTA = 1e-5


@dataclass(frozen=True)
class RoundRecord:
    """What the server knows after one round.

    ``accuracy`` and ``loss`` score the global model on the server's held-out
    test split; ``client_accuracy`` / ``client_loss`` aggregate the clients'
    own evaluations on their local validation samples (``None`` in round 0,
    before any training). ``epsilon`` is the privacy spent so far at
    :data:`DP_DELTA` (``None`` without differential privacy).
    ``dropped_clients`` counts the clients that were asked to train but did
    not answer; ``received_update`` is what the server received from one
    client this round (clear or masked), left out of :meth:`to_dict`.
    """

    round: int
    accuracy: float
    loss: float
    seconds: float
    client_accuracy: float | None = None
    client_loss: float | None = None
    epsilon: float | None = None
    dropped_clients: int = 0
    received_update: ReceivedUpdate | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        """The JSON-ready fields (the received update has its own form: :meth:`ReceivedUpdate.to_json`)."""
        return {k: v for k, v in self.__dict__.items() if k != "received_update"}


@dataclass
class FederationResult:
    """The outcome of a run: the exported model and every round's record."""

    model: LogisticRegression
    history: list[RoundRecord] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.history[-1].accuracy if self.history else float("nan")

    @property
    def epsilon(self) -> float | None:
        return self.history[-1].epsilon if self.history else None


def privacy_accountant(num_clients: int) -> Any:
    """Flower's RDP accountant for ``num_clients`` clients taking part in every round.

    Flower's accountant covers fixed clipping with FedAvg aggregation, every
    client in every round (no sampling amplification) and equal client weights
    (the ClientApp reports ``num-examples = 1`` under DP).
    """
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    return RdpAccountant(
        PrivacyConfig(
            target_delta=DP_DELTA,
            population_size=num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )


class RoundReporter:
    """Scores each round's global model and reports one :class:`RoundRecord` per round.

    Parameters
    ----------
    dataset : Dataset
        The run's dataset; the server scores on its test split.
    grid : FederationGrid
        Where the run's exchanges went (what the server received, who dropped out).
    on_round : callable or None
        Called with each record as soon as it is complete.
    privacy_spent : callable, optional
        Returns Flower's ``PrivacySpent`` so far (or None without accounting).
    preprocessing : str, default="none"
        The run's preprocessing: the test split is scored after it, and the model records it.
    """

    def __init__(
        self,
        dataset: Dataset,
        grid: FederationGrid,
        on_round: Callable[[RoundRecord], None] | None,
        privacy_spent: Callable[[], Any] | None = None,
        preprocessing: str = RAW,
    ):
        self.dataset = dataset
        self.preprocessing = preprocessing
        self._X_test = dataset_features(dataset, preprocessing)[1]
        self.grid = grid
        self.on_round = on_round
        self.privacy_spent = privacy_spent or (lambda: None)
        start = export_model(initial_parameters(dataset), dataset, preprocessing)
        self.result = FederationResult(model=start)
        self._client_eval: dict[str, float] = {}
        self._scores: dict[int, tuple[float, float]] = {}
        self._start = time.perf_counter()

    def client_evaluation(self, metrics: Mapping[str, Any]) -> None:
        """Keep the clients' aggregated evaluation for the round being reported."""
        self._client_eval = {k: float(v) for k, v in metrics.items()}

    def score(self, server_round: int, arrays: list[np.ndarray]) -> tuple[float, float]:
        """Score the global model of ``server_round`` on the test split: ``(accuracy, loss)``."""
        model = export_model(arrays, self.dataset, self.preprocessing)
        accuracy, loss = evaluate(model, self._X_test, self.dataset.y_test)
        self.result.model = model
        self._scores[server_round] = (accuracy, loss)
        return accuracy, loss

    def emit(self, server_round: int) -> RoundRecord:
        """Complete the record of a scored round and pass it on."""
        accuracy, loss = self._scores.pop(server_round)
        client_eval, self._client_eval = (self._client_eval if server_round else {}), {}
        spent = self.privacy_spent()
        received, dropped = self.grid.take_round(server_round)
        record = RoundRecord(
            round=server_round,
            accuracy=accuracy,
            loss=loss,
            seconds=time.perf_counter() - self._start,
            client_accuracy=client_eval.get("accuracy"),
            client_loss=client_eval.get("loss"),
            epsilon=float(spent.epsilon) if spent is not None and spent.num_releases else None,
            dropped_clients=dropped,
            received_update=received,
        )
        self.result.history.append(record)
        if self.on_round is not None:
            self.on_round(record)
        return record

    def finish(self, num_rounds: int) -> FederationResult:
        """The run's result; raises if a round is missing."""
        self.result.seconds = time.perf_counter() - self._start
        if len(self.result.history) != num_rounds + 1:
            raise RuntimeError(
                f"The federation stopped after {len(self.result.history) - 1} of {num_rounds} rounds; "
                "see the Flower log above for the failing client."
            )
        return self.result
