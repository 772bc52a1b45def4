"""The ClientApp: one client trains and evaluates on data that never leaves it."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fl_training.datasets import load_dataset
from fl_training.task import (
    TrainingConfig,
    client_data,
    evaluate,
    feature_scaling,
    fit_local,
    get_parameters,
    new_model,
    set_parameters,
)

app = ClientApp()


def _context_of(msg: Message, context: Context) -> tuple[TrainingConfig, int]:
    """The run's settings and this node's partition id.

    Settings travel in the message's ConfigRecord (the ServerApp puts the run
    config there, so simulations, where ``context.run_config`` is empty, and
    deployments behave alike). The partition id comes from the node config.
    """
    cfg = TrainingConfig.from_mapping(msg.content["config"])
    partition_id = int(context.node_config.get("partition-id", 0))
    num_partitions = int(context.node_config.get("num-partitions", cfg.num_clients))
    if num_partitions != cfg.num_clients:
        raise ValueError(
            f"This SuperNode is one of {num_partitions} partitions, but the run expects "
            f"{cfg.num_clients} clients: start the SuperNodes with num-partitions={cfg.num_clients}."
        )
    return cfg, partition_id


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Fit the global model on the local partition and send back the new weights."""
    cfg, partition_id = _context_of(msg, context)
    dataset = load_dataset(cfg.dataset)
    scaling = feature_scaling(dataset)
    X_train, y_train, _, _ = client_data(cfg, partition_id)
    X_scaled = scaling.transform(X_train)

    global_params = msg.content["arrays"].to_numpy_ndarrays()
    model = set_parameters(new_model(cfg.local_epochs), global_params, dataset.classes)
    fit_local(model, X_scaled, y_train, dataset.classes)
    params = get_parameters(model)

    mu = float(msg.content["config"].get("proximal-mu", 0.0))
    if mu > 0:
        # FedProx: the proximal step of (mu/2)·||w - w_global||² applied to the
        # local solution keeps the update close to the global model.
        params = [(p + mu * g) / (1.0 + mu) for p, g in zip(params, global_params, strict=True)]
        set_parameters(model, params, dataset.classes)

    accuracy, loss = evaluate(model, X_scaled, y_train)
    # Under differential privacy, Flower's accountant needs equal client
    # weights: every update counts once, whatever the partition's size.
    num_examples = 1 if cfg.differential_privacy else len(y_train)
    metrics = MetricRecord(
        {"train_accuracy": accuracy, "train_loss": loss, "num-examples": num_examples}
    )
    content = RecordDict({"arrays": ArrayRecord(params), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_local(msg: Message, context: Context) -> Message:
    """Score the global model on this client's held-out local samples."""
    cfg, partition_id = _context_of(msg, context)
    dataset = load_dataset(cfg.dataset)
    scaling = feature_scaling(dataset)
    _, _, X_val, y_val = client_data(cfg, partition_id)

    params = msg.content["arrays"].to_numpy_ndarrays()
    model = set_parameters(new_model(), params, dataset.classes)
    accuracy, loss = evaluate(model, scaling.transform(X_val), y_val)
    metrics = MetricRecord({"accuracy": accuracy, "loss": loss, "num-examples": len(y_val)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


__all__ = ["app"]
