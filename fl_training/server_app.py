"""The ServerApp: builds a strategy, runs the rounds, scores the global model.

The server never sees a client's data: it receives weights and metrics, and
scores each round's global model on the held-out test split it owns. With
secure aggregation it does not even see a client's weights, only their sum
(:mod:`fl_training.secure_aggregation`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp import strategy as strategies
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from fl_training.config import MIN_CLIENTS, TrainingConfig, check_fits_dataset
from fl_training.datasets import Dataset, load_dataset
from fl_training.federation import (
    Federation,
    FederationError,
    FederationGrid,
    discover_federation,
    wait_for_nodes,
)
from fl_training.model_io import save_model
from fl_training.preprocessing import run_preprocessing
from fl_training.rounds import DP_DELTA, FederationResult, RoundRecord, RoundReporter, privacy_accountant
from fl_training.task import initial_parameters, strategy_class
from fl_training.validation import Real

#: How long a run waits for its SuperNodes (run-config key ``node-wait-seconds``).
NODE_WAIT_SECONDS = 120.0
#: Longest wait for the replies of one exchange (run-config key ``round-timeout``); a client
#: that has not answered by then counts as dropped out.
ROUND_TIMEOUT_SECONDS = 600.0
#: Bounds of both run-config keys, in seconds.
WAIT = Real(1.0, 86_400.0)


def build_strategy(cfg: TrainingConfig, on_client_eval: Callable[[MetricRecord], None]) -> Strategy:
    """The strategy named by ``cfg.strategy``, sampling every connected client each round."""
    def aggregate_evaluate(records: list[RecordDict], weighting_key: str) -> MetricRecord:
        aggregated = aggregate_metricrecords(records, weighting_key)
        on_client_eval(aggregated)
        return aggregated

    common = dict(
        fraction_train=1.0,
        fraction_evaluate=1.0,
        # The federation is complete before round 1; later rounds go on with the clients still there.
        min_train_nodes=MIN_CLIENTS,
        min_evaluate_nodes=MIN_CLIENTS,
        min_available_nodes=MIN_CLIENTS,
        evaluate_metrics_aggr_fn=aggregate_evaluate,
    )
    name, own = strategy_class(cfg)
    strategy: Strategy = getattr(strategies, name)(**own, **common)
    if cfg.differential_privacy:
        # Clip every update on the server, add Gaussian noise, and account for ε.
        # TrainingConfig has already refused any strategy but FedAvg.
        strategy = DifferentialPrivacyServerSideFixedClipping(
            strategy,
            noise_multiplier=cfg.noise_multiplier,
            clipping_norm=cfg.clipping_norm,
            num_sampled_clients=cfg.num_clients,
            accountant=privacy_accountant(cfg.num_clients),
        )
    return strategy


def run_federation(
    grid: Grid,
    cfg: TrainingConfig,
    on_round: Callable[[RoundRecord], None] | None = None,
    *,
    federation: Federation | None = None,
    round_timeout: float = ROUND_TIMEOUT_SECONDS,
) -> FederationResult:
    """Run ``cfg.num_rounds`` federated rounds over the nodes behind ``grid``.

    Parameters
    ----------
    grid : Grid
        Flower's handle to the SuperNodes (simulated or real).
    cfg : TrainingConfig
        The run's settings. They are sent to the clients with every message;
        ``cfg.secure_aggregation`` selects the SecAgg+ workflow.
    on_round : callable, optional
        Called with a :class:`RoundRecord` after round 0 (the initial model)
        and after every round, while the run goes on.
    federation : Federation, optional
        The nodes taking part; by default the first ``cfg.num_clients`` to connect.
    round_timeout : float
        Longest wait for the replies of one exchange, in seconds.

    Returns
    -------
    FederationResult
        The exported model (it takes raw features) and the per-round history.
    """
    dataset = load_dataset(cfg.dataset)
    check_fits_dataset(cfg, dataset)  # the server's own precondition, whoever started the run
    if federation is None:
        federation = wait_for_nodes(grid, cfg.num_clients, NODE_WAIT_SECONDS)
    federation_grid = FederationGrid(grid, federation, timeout=round_timeout)
    if cfg.secure_aggregation:
        from fl_training.secure_aggregation import run_secure_federation

        return run_secure_federation(federation_grid, cfg, dataset, on_round)
    return _run_in_the_clear(federation_grid, cfg, dataset, on_round)


def _run_in_the_clear(
    grid: FederationGrid,
    cfg: TrainingConfig,
    dataset: Dataset,
    on_round: Callable[[RoundRecord], None] | None,
) -> FederationResult:
    """Flower's Message API strategies: the server receives every client's weights."""
    preprocessing = run_preprocessing(cfg.dataset, cfg.deskew)
    reporter = RoundReporter(dataset, grid, on_round, preprocessing=preprocessing)
    strategy = build_strategy(cfg, reporter.client_evaluation)
    reporter.privacy_spent = getattr(strategy, "privacy_spent", None) or reporter.privacy_spent

    def evaluate_global(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        accuracy, loss = reporter.score(server_round, arrays.to_numpy_ndarrays())
        reporter.emit(server_round)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    train_config = ConfigRecord({k.replace("_", "-"): v for k, v in cfg.to_dict().items()})
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_parameters(dataset, cfg.initial_model, preprocessing)),
        num_rounds=cfg.num_rounds,
        timeout=grid.timeout,
        train_config=train_config,
        evaluate_config=train_config,
        evaluate_fn=evaluate_global,
    )
    return reporter.finish(cfg.num_rounds)


@dataclass(frozen=True)
class ServerSettings:
    """What the ServerApp reads from a deployment's run config besides the training settings.

    Attributes
    ----------
    training : TrainingConfig
        The training settings (``num_clients`` is replaced by the federation's size).
    num_clients : int or None
        The run-config key ``num-clients``; 0 or absent: as many clients as the
        SuperNodes' node config says (``num-partitions``).
    output : str
        Where the final model is written as ``.skops`` (empty: not written).
    node_wait_seconds, round_timeout : float
        Longest waits for the SuperNodes to arrive and for one exchange's replies.
    """

    training: TrainingConfig
    num_clients: int | None = None
    output: str = ""
    node_wait_seconds: float = NODE_WAIT_SECONDS
    round_timeout: float = ROUND_TIMEOUT_SECONDS

    @classmethod
    def from_run_config(cls, run_config: Any) -> ServerSettings:
        """Read ``context.run_config`` (``num-server-rounds`` is Flower's name for the rounds)."""
        values = dict(run_config)
        if "num-server-rounds" in values:
            values["num-rounds"] = values.pop("num-server-rounds")
        output = str(values.pop("output", "") or "")
        node_wait = values.pop("node-wait-seconds", NODE_WAIT_SECONDS)
        round_timeout = values.pop("round-timeout", ROUND_TIMEOUT_SECONDS)
        num_clients = values.pop("num-clients", 0)
        if num_clients != 0:
            num_clients = TrainingConfig.from_values(num_clients=num_clients).num_clients
        return cls(
            training=TrainingConfig.from_mapping(values),
            num_clients=num_clients or None,
            output=output,
            node_wait_seconds=WAIT.check("node-wait-seconds", node_wait),
            round_timeout=WAIT.check("round-timeout", round_timeout),
        )


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: settings come from ``[tool.flwr.app.config]``."""
    settings = ServerSettings.from_run_config(context.run_config)
    try:
        federation = discover_federation(grid, settings.num_clients, settings.node_wait_seconds)
    except FederationError as exc:
        print(f"error: {exc}", flush=True)
        raise
    cfg = dataclasses.replace(settings.training, num_clients=federation.size)
    mode = "secure aggregation (SecAgg+)" if cfg.secure_aggregation else "aggregation in the clear"
    print(f"Training {cfg.dataset} with {cfg.num_clients} clients, {cfg.strategy}, {mode}.", flush=True)
    result = run_federation(
        grid, cfg, on_round=_print_round, federation=federation, round_timeout=settings.round_timeout
    )
    if settings.output:
        path = save_model(result.model, settings.output)
        print(f"Model written to {path}", flush=True)


def _print_round(record: RoundRecord) -> None:
    eps = f"  epsilon {record.epsilon:.2f}" if record.epsilon is not None else ""
    dropped = f"  {record.dropped_clients} client(s) dropped out" if record.dropped_clients else ""
    print(
        f"round {record.round}: accuracy {record.accuracy:.4f}  loss {record.loss:.4f}"
        f"  ({record.seconds:.1f} s){eps}{dropped}",
        flush=True,
    )


__all__ = [
    "DP_DELTA",
    "FederationResult",
    "RoundRecord",
    "ServerSettings",
    "app",
    "run_federation",
]
