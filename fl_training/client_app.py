"""The ClientApp: one client trains and evaluates on data that never leaves it.

The same ClientApp serves both ServerApp workflows. Flower's Message API
strategies send ``arrays`` and ``config`` records; the SecAgg+ workflow
(:mod:`fl_training.secure_aggregation`) speaks Flower's legacy fit/evaluate
records, and its messages carry SecAgg+'s own records, on which the client
answers with Flower's ``secaggplus_mod`` (masking its weights before they
leave) and, under differential privacy, clips its update first with
``fixedclipping_mod``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fl_training.config import TrainingConfig
from fl_training.datasets import load_dataset
from fl_training.task import (
    OWN_DATA,
    PARTITION_RECORD,
    client_data,
    equal_client_weights,
    evaluate,
    feature_scaling,
    fit_local,
    get_parameters,
    is_reference_client,
    new_model,
    partition_indices,
    set_parameters,
)


def secure_aggregation_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Follow the SecAgg+ protocol for the messages of a secure-aggregation run."""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


def client_side_clipping_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Clip this client's update when the server asks for it (DP under secure aggregation)."""
    config = msg.content.config_records.get("fitins.config")
    if msg.metadata.message_type == MessageType.TRAIN and config is not None and KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


#: Around the handlers, outermost first: masking must see the clipped update.
MODS: tuple[Mod, ...] = (secure_aggregation_when_asked, client_side_clipping_when_asked)


@dataclass(frozen=True)
class _Instruction:
    """What the server sent, in either format: settings and global weights."""

    settings: Mapping[str, Any]
    arrays: list[np.ndarray]
    legacy: bool


def _read(msg: Message, kind: str) -> _Instruction:
    """``kind`` is ``"fitins"`` or ``"evaluateins"`` (the legacy records' prefix)."""
    if f"{kind}.config" in msg.content.config_records:
        to_ins = compat.recorddict_to_fitins if kind == "fitins" else compat.recorddict_to_evaluateins
        ins = to_ins(msg.content, keep_input=True)
        return _Instruction(ins.config, parameters_to_ndarrays(ins.parameters), legacy=True)
    return _Instruction(msg.content["config"], msg.content["arrays"].to_numpy_ndarrays(), legacy=False)


def _context_of(settings: Mapping[str, Any], context: Context) -> tuple[TrainingConfig, int]:
    """The run's settings and this node's partition id.

    Settings travel in the message (the ServerApp puts the run config there,
    so simulations, where ``context.run_config`` is empty, and deployments
    behave alike). The partition id comes from the node config.
    """
    cfg = TrainingConfig.from_mapping(settings)
    partition_id = int(context.node_config.get("partition-id", 0))
    num_partitions = int(context.node_config.get("num-partitions", cfg.num_clients))
    if num_partitions != cfg.num_clients:
        raise ValueError(
            f"This SuperNode is one of {num_partitions} partitions, but the run expects "
            f"{cfg.num_clients} clients: start the SuperNodes with num-partitions={cfg.num_clients}."
        )
    if not 0 <= partition_id < num_partitions:  # a negative id would index from the end
        raise ValueError(
            f"This SuperNode's partition-id is {partition_id}, but with {num_partitions} partitions it must "
            f"be 0 … {num_partitions - 1}: start it with a partition-id in that range."
        )
    return cfg, partition_id


def train(msg: Message, context: Context) -> Message:
    """Fit the global model on the local partition and send back the new weights."""
    instruction = _read(msg, "fitins")
    cfg, partition_id = _context_of(instruction.settings, context)
    dataset = load_dataset(cfg.dataset)
    scaling = feature_scaling(dataset)
    X_train, y_train, _, _ = client_data(cfg, partition_id, context.node_config.get("drawings"))
    X_scaled = scaling.transform(X_train)

    global_params = instruction.arrays
    model = set_parameters(new_model(cfg.local_epochs), global_params, dataset.classes)
    fit_local(model, X_scaled, y_train, dataset.classes)
    params = get_parameters(model)
    if cfg.strategy == "fedprox" and cfg.proximal_mu > 0:
        # FedProx: the proximal step of (mu/2)·||w - w_global||² applied to the
        # local solution keeps the update close to the global model.
        mu = cfg.proximal_mu
        params = [(p + mu * g) / (1.0 + mu) for p, g in zip(params, global_params, strict=True)]
        set_parameters(model, params, dataset.classes)

    accuracy, loss = evaluate(model, X_scaled, y_train)
    num_examples = 1 if equal_client_weights(cfg) else len(y_train)
    metrics = {"train_accuracy": accuracy, "train_loss": loss}
    if instruction.legacy:
        result = FitRes(Status(Code.OK, "ok"), ndarrays_to_parameters(params), num_examples, metrics)
        content = compat.fitres_to_recorddict(result, keep_input=True)
    else:
        content = RecordDict({
            "arrays": ArrayRecord(params), "metrics": MetricRecord({**metrics, "num-examples": num_examples}),
        })
    return Message(content=content, reply_to=msg)


def evaluate_local(msg: Message, context: Context) -> Message:
    """Score the global model on this client's held-out local samples."""
    instruction = _read(msg, "evaluateins")
    cfg, partition_id = _context_of(instruction.settings, context)
    dataset = load_dataset(cfg.dataset)
    scaling = feature_scaling(dataset)
    _, _, X_val, y_val = client_data(cfg, partition_id, context.node_config.get("drawings"))

    model = set_parameters(new_model(), instruction.arrays, dataset.classes)
    accuracy, loss = evaluate(model, scaling.transform(X_val), y_val)
    # A reference client's held-back images are left out of the clients' evaluation (weight 0).
    counted = 0 if is_reference_client(cfg, partition_id, context.node_config.get("drawings")) else len(y_val)
    if instruction.legacy:
        result = EvaluateRes(Status(Code.OK, "ok"), loss, counted, {"accuracy": accuracy, "loss": loss})
        content = compat.evaluateres_to_recorddict(result)
    else:
        metrics = MetricRecord({"accuracy": accuracy, "loss": loss, "num-examples": counted})
        content = RecordDict({"metrics": metrics})
    return Message(content=content, reply_to=msg)


def describe_partition(msg: Message, context: Context) -> Message:
    """Say which partition this SuperNode holds, as its node config says (nothing about the data).

    The values go as the node config holds them: the server checks their ranges
    (``fl_training.federation``) and, if they are wrong, names them when it
    leaves this node out.
    """
    if "drawings" in context.node_config:
        record = ConfigRecord({OWN_DATA: 1})  # any partition will do: it trains on its own file
    else:
        keys = ("partition-id", "num-partitions")
        record = ConfigRecord({k: context.node_config[k] for k in keys if k in context.node_config})
    return Message(content=RecordDict({PARTITION_RECORD: record}), reply_to=msg)


def build_client_app(extra_mods: Sequence[Mod] = ()) -> ClientApp:
    """The project's ClientApp; ``extra_mods`` run outermost (e.g. a test's client that fails)."""
    client_app = ClientApp(mods=[*extra_mods, *MODS])
    client_app.train()(train)
    client_app.evaluate()(evaluate_local)
    client_app.query()(describe_partition)
    return client_app


def preload(config: TrainingConfig) -> int:
    """Pay a client's first-message costs ahead of time: imports, the dataset, ``config``'s partitions.

    A simulation engine's workers call it once, before any run (see
    ``fl_training.runtime_worker``); returns the number of partitions.
    """
    return len(partition_indices(config))


app = build_client_app()

__all__ = ["MODS", "app", "build_client_app", "preload"]
