"""Secure aggregation: the server runs Flower's SecAgg+ protocol and sees only the sum.

Server role. Flower 1.42 offers SecAgg+ on its workflow API: a
``SecAggPlusWorkflow`` inside a ``DefaultWorkflow``, driving a
``flwr.server.strategy`` strategy through a ``LegacyContext``. Each client
masks its (quantized, weighted) weights with pairwise masks that cancel in
the sum and a private mask whose seed it secret-shares with its neighbours;
the server adds the masked vectors and removes the masks with shares from the
clients still there, so a client that drops out after sharing its keys does
not stop the round. The ClientApp (:mod:`fl_training.client_app`) answers
with ``secaggplus_mod`` whenever a message carries SecAgg+'s records.

Differential privacy composes with it as Flower's client-side fixed
clipping: the server cannot see, hence cannot clip, an individual update, so
each client clips its own before masking it; the server adds Gaussian noise
to the unmasked mean and accounts for ε exactly as without secure aggregation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Context, RecordDict
from flwr.common import Scalar, ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server import strategy as strategies
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.default_workflows import default_evaluate_workflow
from flwr.serverapp import GaussianPrivacyEvent, Grid

from fl_training.config import MIN_CLIENTS, TrainingConfig
from fl_training.datasets import Dataset
from fl_training.federation import SECAGG_MODULUS, FederationGrid
from fl_training.preprocessing import run_preprocessing
from fl_training.rounds import FederationResult, RoundRecord, RoundReporter, privacy_accountant
from fl_training.task import equal_client_weights, initial_parameters, partition_indices, strategy_class

#: Neighbours a client shares its secrets with (itself included) in larger federations: SecAgg+
#: keeps each client's work logarithmic instead of linear in the number of clients.
MAX_SHARES = 11
#: Weights (scaled by the client's share of the examples) are clipped to ± this before quantization.
CLIPPING_RANGE = 64.0
#: Quantization levels over [-CLIPPING_RANGE, CLIPPING_RANGE]: a step of 7.6e-6.
#: Masked sums stay below the modulus for up to 2**32 / 2**24 = 256 clients.
QUANTIZATION_RANGE = 2**24


def share_settings(num_clients: int) -> tuple[int | float, int]:
    """SecAgg+'s ``num_shares`` and ``reconstruction_threshold`` for a federation.

    Every client shares its secrets with all others (at most :data:`MAX_SHARES`,
    an odd number, in larger federations); a secret can be rebuilt from a
    strict majority of its shares. So a round survives up to
    ``shares - threshold`` clients dropping out among a client's neighbours
    (1 of 3, 4 of 10), while the server alone, or with fewer colluding clients
    than the threshold, cannot unmask anyone.

    Returns
    -------
    num_shares : int or float
        ``1.0`` (Flower's spelling of "all sampled clients") up to
        :data:`MAX_SHARES` clients, else :data:`MAX_SHARES`.
    threshold : int
        Shares needed to rebuild a secret.
    """
    shares = min(num_clients, MAX_SHARES)
    return (1.0 if shares == num_clients else shares), shares // 2 + 1


def largest_weight(cfg: TrainingConfig) -> float:
    """The largest weight (``num-examples``) a client reports: SecAgg+ scales each update by its
    weight over this one before quantizing, so the largest client keeps the full precision.

    Under DP every client weighs 1 (equal weights are what the accountant assumes); otherwise
    the largest partition bounds it (partitions follow from the run's public settings).
    """
    if equal_client_weights(cfg):
        return 1.0
    return float(max(len(part) for part in partition_indices(cfg)))


class _AccountedClientSideClipping(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping wrapper, with ε accounted for every noisy release."""

    def __init__(self, strategy: Strategy, cfg: TrainingConfig):
        super().__init__(strategy, cfg.noise_multiplier, cfg.clipping_norm, cfg.num_clients)
        self.accountant = privacy_accountant(cfg.num_clients)

    def aggregate_fit(
        self, server_round: int, results: list, failures: list
    ) -> tuple[Any, dict[str, Scalar]]:
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None:  # noise was added: one more release
            self.accountant.compose(GaussianPrivacyEvent(
                noise_multiplier=self.noise_multiplier,
                sample_size=self.num_sampled_clients,
                population_size=self.accountant.config.population_size,
            ))
        return parameters, metrics

    def privacy_spent(self) -> Any:
        return self.accountant.get_privacy_spent()


def _weighted_means(results: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
    total = sum(n for n, _ in results)
    keys = set.intersection(*(set(m) for _, m in results)) if results else set()
    return {k: sum(n * float(m[k]) for n, m in results) / total for k in keys} if total else {}


def build_legacy_strategy(
    cfg: TrainingConfig, dataset: Dataset, reporter: RoundReporter, evaluate_fn: Callable
) -> Strategy:
    """The ``flwr.server.strategy`` strategy SecAgg+ drives, configured like the plain run's."""
    settings = {k.replace("_", "-"): v for k, v in cfg.to_dict().items()}

    def aggregate_client_evaluation(results: list[tuple[int, dict[str, Scalar]]]) -> dict[str, Scalar]:
        means = _weighted_means(results)
        reporter.client_evaluation(means)
        return means

    common = dict(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        # The federation is complete before round 1; later rounds go on with the clients still there.
        min_fit_clients=MIN_CLIENTS,
        min_evaluate_clients=MIN_CLIENTS,
        min_available_clients=MIN_CLIENTS,
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda _round: dict(settings),
        on_evaluate_config_fn=lambda _round: dict(settings),
        fit_metrics_aggregation_fn=_weighted_means,
        evaluate_metrics_aggregation_fn=aggregate_client_evaluation,
        initial_parameters=ndarrays_to_parameters(
            initial_parameters(dataset, cfg.initial_model, run_preprocessing(cfg.dataset, cfg.deskew))),
    )
    name, own = strategy_class(cfg)
    strategy: Strategy = getattr(strategies, name)(**own, **common)
    if cfg.differential_privacy:
        strategy = _AccountedClientSideClipping(strategy, cfg)
    return strategy


def run_secure_federation(
    grid: FederationGrid,
    cfg: TrainingConfig,
    dataset: Dataset,
    on_round: Callable[[RoundRecord], None] | None = None,
) -> FederationResult:
    """Run ``cfg.num_rounds`` rounds in which the server only learns the sum of the updates.

    Parameters
    ----------
    grid : FederationGrid
        The federation's nodes (each exchange bounded by ``grid.timeout``).
    cfg : TrainingConfig
        The run's settings (``secure_aggregation`` true).
    dataset : Dataset
        Its dataset; the server scores each round on the test split.
    on_round : callable, optional
        Called with each round's :class:`RoundRecord` (round 0 first).

    Returns
    -------
    FederationResult
        The exported model and the per-round history.
    """
    reporter: RoundReporter

    def evaluate_fn(server_round: int, arrays: list[np.ndarray], _config: dict) -> tuple[float, dict]:
        accuracy, loss = reporter.score(server_round, arrays)
        if server_round == 0:  # later rounds are reported once the clients have evaluated too
            reporter.emit(0)
        return loss, {"accuracy": accuracy}

    def evaluate_then_report(workflow_grid: Grid, context: Context) -> None:
        default_evaluate_workflow(workflow_grid, context)
        reporter.emit(int(context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND]))

    preprocessing = run_preprocessing(cfg.dataset, cfg.deskew)
    reporter = RoundReporter(dataset, grid, on_round, preprocessing=preprocessing)
    strategy = build_legacy_strategy(cfg, dataset, reporter, evaluate_fn)
    reporter.privacy_spent = getattr(strategy, "privacy_spent", None) or reporter.privacy_spent
    num_shares, threshold = share_settings(cfg.num_clients)
    secagg = SecAggPlusWorkflow(
        num_shares=num_shares,
        reconstruction_threshold=threshold,
        max_weight=largest_weight(cfg),
        clipping_range=CLIPPING_RANGE,
        quantization_range=QUANTIZATION_RANGE,
        modulus_range=SECAGG_MODULUS,
        timeout=grid.timeout,
    )
    base = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(context=base, config=ServerConfig(num_rounds=cfg.num_rounds), strategy=strategy)
    DefaultWorkflow(fit_workflow=secagg, evaluate_workflow=evaluate_then_report)(grid, context)
    return reporter.finish(cfg.num_rounds)
