"""A SuperNode's node config is bounded: a node out of range is left out, named, and costs nothing.

The discovery runs on a small in-process grid whose nodes answer the partition
query with the project's own ClientApp handler (``describe_partition``) from a
given node config, so the node config's path from SuperNode to ServerApp is
the real one without SuperLink or SuperNode processes.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from flwr.app import Context, Message, RecordDict

from fl_training.client_app import _context_of, describe_partition
from fl_training.config import TRAINING_CONSTRAINTS
from fl_training.federation import Federation, FederationError, discover_federation

NUM_CLIENTS = TRAINING_CONSTRAINTS["num_clients"]
HUGE = 1_000_000_000


class NodeConfigGrid:
    """A grid of SuperNodes, each answering a query as the project's ClientApp does from its node config."""

    def __init__(self, node_configs: dict[int, dict]):
        self.node_configs = node_configs
        self.queries: Counter[int] = Counter()  # node → how often it was asked

    def get_node_ids(self) -> list[int]:
        return list(self.node_configs)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for message in messages:
            node = message.metadata.dst_node_id
            self.queries[node] += 1
            context = Context(run_id=1, node_id=node, node_config=self.node_configs[node], state=RecordDict(),
                              run_config={})
            replies.append(describe_partition(message, context))
        return replies


@pytest.fixture(autouse=True)
def server_task_identity(monkeypatch):
    """Who sends the queries, as Flower's ServerApp runtime sets it before ``main`` runs."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)


def _discover(grid: NodeConfigGrid, expected: int | None) -> tuple[Federation, list[str]]:
    said: list[str] = []
    return discover_federation(grid, expected, wait_seconds=5, say=said.append), said


@pytest.mark.parametrize("expected", [None, 2])
def test_a_node_with_a_huge_num_partitions_is_left_out_and_named(expected):
    grid = NodeConfigGrid({11: _node(0, 2), 12: _node(0, HUGE), 13: _node(1, 2)})
    started = time.monotonic()
    federation, said = _discover(grid, expected)
    assert time.monotonic() - started < 1.0
    assert federation.node_ids == (11, 13)
    left_out = [line for line in said if "SuperNode 12 is left out" in line]
    assert len(left_out) == 1, said
    assert f"num-partitions must be a whole number from {NUM_CLIENTS.low} to {NUM_CLIENTS.high}, got {HUGE}" \
        in left_out[0]
    assert 'partition-id=I num-partitions=N' in left_out[0]


def _node(partition_id, num_partitions=None) -> dict:
    config = {"partition-id": partition_id}
    return config if num_partitions is None else {**config, "num-partitions": num_partitions}


@pytest.mark.parametrize(
    ("node_config", "problem"),
    [
        (_node(2, 2), "partition-id must be a whole number from 0 to 1, got 2"),
        (_node(-1, 2), "partition-id must be a whole number from 0 to 1, got -1"),
        (_node(0.5, 2), "partition-id must be a whole number from 0 to 1, got 0.5"),
        (_node(HUGE), f"partition-id must be a whole number from 0 to 1, got {HUGE}"),  # the run's 2
        (_node(0, 1), "num-partitions must be a whole number from 2 to 100, got 1"),
        (_node(0, "two"), "num-partitions must be a whole number from 2 to 100, got 'two'"),
    ],
)
def test_a_partition_out_of_range_is_left_out_with_its_value_and_range(node_config, problem):
    grid = NodeConfigGrid({1: _node(0, 2), 2: node_config, 3: _node(1, 2)})
    federation, said = _discover(grid, expected=2)
    assert federation.node_ids == (1, 3)
    assert any(line.startswith("SuperNode 2 is left out") and problem in line for line in said), said


def test_a_federation_of_nodes_out_of_range_gives_up_in_time_asking_each_once():
    grid = NodeConfigGrid({7: _node(0, HUGE)})
    said: list[str] = []
    started = time.monotonic()
    with pytest.raises(FederationError, match=r"1 connected, 1 left out for their node config, no other has"):
        discover_federation(grid, None, 1.5, say=said.append)
    assert time.monotonic() - started < 3.0
    assert grid.queries == {7: 1}  # never asked again, so named once
    assert sum("SuperNode 7 is left out" in line for line in said) == 1


def test_a_node_bringing_its_own_drawings_still_takes_a_free_partition():
    grid = NodeConfigGrid({4: {"drawings": "/data/alice.npz"}, 5: _node(0, 2), 6: _node(0, HUGE)})
    federation, said = _discover(grid, expected=2)
    assert federation.node_ids == (5, 4)
    assert any("SuperNode 6 is left out" in line for line in said)


def test_a_client_refuses_to_train_on_a_partition_id_out_of_range():
    for partition_id in (2, -1):
        context = Context(run_id=1, node_id=1, node_config=_node(partition_id, 2), state=RecordDict(),
                          run_config={})
        with pytest.raises(ValueError, match=f"partition-id is {partition_id}, but with 2 partitions"):
            _context_of({"num-clients": 2}, context)


def test_a_long_value_is_named_shortly():
    grid = NodeConfigGrid({1: _node(0, 2), 2: _node(0, "9" * 100_000), 3: _node(1, 2)})
    _, said = _discover(grid, expected=2)
    (left_out,) = [line for line in said if "SuperNode 2 is left out" in line]
    assert "num-partitions must be a whole number from 2 to 100, got '999" in left_out
    assert len(left_out) < 1000
