"""The ServerApp: builds a strategy, runs the rounds, scores the global model.

The server never sees a client's data: it receives weights and metrics, and
scores each round's global model on the held-out test split it owns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from sklearn.linear_model import LogisticRegression

from fl_training.datasets import load_dataset
from fl_training.model_io import save_model
from fl_training.task import TrainingConfig, check_fits_dataset, evaluate, export_model, initial_parameters

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
    """

    round: int
    accuracy: float
    loss: float
    seconds: float
    client_accuracy: float | None = None
    client_loss: float | None = None
    epsilon: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


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


def build_strategy(cfg: TrainingConfig, on_client_eval: Callable[[MetricRecord], None]) -> Strategy:
    """The strategy named by ``cfg.strategy``, sampling every client each round."""
    def aggregate_evaluate(records: list[RecordDict], weighting_key: str) -> MetricRecord:
        aggregated = aggregate_metricrecords(records, weighting_key)
        on_client_eval(aggregated)
        return aggregated

    common = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        min_train_nodes=cfg.num_clients,
        min_evaluate_nodes=cfg.num_clients,
        min_available_nodes=cfg.num_clients,
        evaluate_metrics_aggr_fn=aggregate_evaluate,
    )
    strategy: Strategy
    if cfg.strategy == "fedprox":
        strategy = FedProx(proximal_mu=cfg.proximal_mu, **common)
    elif cfg.strategy == "fedadam":
        # Adam on the server treats the averaged update as a pseudo-gradient;
        # a smaller step than Flower's default suits a linear model's weights.
        strategy = FedAdam(eta=0.05, eta_l=0.05, **common)
    elif cfg.strategy == "fedmedian":
        strategy = FedMedian(**common)
    else:
        strategy = FedAvg(**common)
    if cfg.differential_privacy:
        strategy = _with_differential_privacy(strategy, cfg)
    return strategy


def _with_differential_privacy(strategy: Strategy, cfg: TrainingConfig) -> Strategy:
    """Clip every update on the server, add Gaussian noise, and account for ε.

    Flower's accountant supports fixed clipping with FedAvg aggregation, every
    client taking part in every round (no sampling amplification) and equal
    client weights (the ClientApp reports ``num-examples = 1`` under DP).
    :func:`fl_training.task.validate_config` has already refused any other
    strategy and a noise multiplier of 0.
    """
    from flwr.serverapp import NeighboringRelation, PrivacyConfig, RdpAccountant, SamplingMethod

    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=DP_DELTA,
            population_size=cfg.num_clients,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    return DifferentialPrivacyServerSideFixedClipping(
        strategy,
        noise_multiplier=cfg.noise_multiplier,
        clipping_norm=cfg.clipping_norm,
        num_sampled_clients=cfg.num_clients,
        accountant=accountant,
    )


def run_federation(
    grid: Grid, cfg: TrainingConfig, on_round: Callable[[RoundRecord], None] | None = None
) -> FederationResult:
    """Run ``cfg.num_rounds`` federated rounds over the nodes behind ``grid``.

    Parameters
    ----------
    grid : Grid
        Flower's handle to the SuperNodes (simulated or real).
    cfg : TrainingConfig
        The run's settings. They are sent to the clients with every message.
    on_round : callable, optional
        Called with a :class:`RoundRecord` after round 0 (the initial model)
        and after every round, while the run goes on.

    Returns
    -------
    FederationResult
        The exported model (it takes raw features) and the per-round history.
    """
    dataset = load_dataset(cfg.dataset)
    check_fits_dataset(cfg, dataset)
    client_eval: dict[str, float] = {}
    strategy = build_strategy(cfg, lambda record: client_eval.update(dict(record)))
    result = FederationResult(model=export_model(initial_parameters(dataset), dataset))
    start = time.perf_counter()

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = export_model(arrays.to_numpy_ndarrays(), dataset)
        accuracy, loss = evaluate(model, dataset.X_test, dataset.y_test)
        spent = getattr(strategy, "privacy_spent", lambda: None)()
        record = RoundRecord(
            round=server_round,
            accuracy=accuracy,
            loss=loss,
            seconds=time.perf_counter() - start,
            client_accuracy=client_eval.pop("accuracy", None) if server_round else None,
            client_loss=client_eval.pop("loss", None) if server_round else None,
            epsilon=float(spent.epsilon) if spent is not None and spent.num_releases else None,
        )
        result.model = model
        result.history.append(record)
        if on_round is not None:
            on_round(record)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    train_config = ConfigRecord({k.replace("_", "-"): v for k, v in cfg.to_dict().items()})
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_parameters(dataset)),
        num_rounds=cfg.num_rounds,
        train_config=train_config,
        evaluate_config=train_config,
        evaluate_fn=evaluate_global,
    )
    result.seconds = time.perf_counter() - start
    if len(result.history) != cfg.num_rounds + 1:
        raise RuntimeError(
            f"The federation stopped after {len(result.history) - 1} of {cfg.num_rounds} rounds; "
            "see the Flower log above for the failing client."
        )
    return result


def config_from_run_config(run_config) -> tuple[TrainingConfig, str]:
    """Read a run's settings from ``context.run_config``, with defaults.

    ``num-server-rounds`` is Flower's name for the number of rounds; ``output``
    names where the final model is written (empty: not written).
    """
    values = dict(run_config)
    if "num-server-rounds" in values:
        values["num-rounds"] = values.pop("num-server-rounds")
    output = str(values.pop("output", "") or "")
    return TrainingConfig.from_mapping(values), output


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: settings come from ``[tool.flwr.app.config]``."""
    cfg, output = config_from_run_config(context.run_config)
    result = run_federation(grid, cfg, on_round=_print_round)
    if output:
        path = save_model(result.model, output)
        print(f"Model written to {path}", flush=True)


def _print_round(record: RoundRecord) -> None:
    eps = f"  epsilon {record.epsilon:.2f}" if record.epsilon is not None else ""
    print(
        f"round {record.round}: accuracy {record.accuracy:.4f}  loss {record.loss:.4f}"
        f"  ({record.seconds:.1f} s){eps}",
        flush=True,
    )


__all__ = ["app", "run_federation", "RoundRecord", "FederationResult"]
