"""Who takes part in a run, and what the server receives from them.

Server role. In a deployment the federation is the SuperNodes that are
connected: :func:`discover_federation` waits for them (saying what it waits
for) and asks each which partition its node config gives it, up to a bounded
wait; a node whose answer is out of range is left out, with a message.
:class:`FederationGrid` then wraps Flower's grid for the run: only those
nodes, every exchange bounded in time, and a note of what the server received
from one client in each round (:class:`ReceivedUpdate`) and of the clients
that dropped out.
"""

from __future__ import annotations

import base64
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from flwr.serverapp import Grid

from fl_training.config import TRAINING_CONSTRAINTS
from fl_training.task import OWN_DATA, PARTITION_RECORD
from fl_training.validation import SettingError, Whole

#: The partition id of a SuperNode that trains on its own data (any free partition will do).
ANY_PARTITION = -1
#: The modulus of SecAgg+'s masked vectors (Flower's default, 2**32).
SECAGG_MODULUS = 2**32
#: How often the wait for SuperNodes says what it is waiting for.
WAIT_REPORT_SECONDS = 5.0
#: Longest wait for SuperNodes to say which partition they hold (the first message
#: of a run starts their ClientApp); one that has not answered is asked again.
QUERY_TIMEOUT_SECONDS = 30.0
#: How often an exchange asks for its replies. Flower's grids ask every 0.1 s (simulation) or 3 s
#: (Deployment Engine); a round under SecAgg+ is five exchanges, so their waits added up to about
#: a tenth of a class run on the simulation and most of a round on the Deployment Engine.
PULL_SECONDS = 0.05
#: What a SuperNode's node config may say ``num-partitions`` is: the bound of ``num_clients``.
NUM_PARTITIONS: Whole = TRAINING_CONSTRAINTS["num_clients"]
#: The node config a SuperNode of a federation is started with.
_NODE_CONFIG = (
    f"--node-config \"partition-id=I num-partitions=N\" (N = {NUM_PARTITIONS.low} … {NUM_PARTITIONS.high}, "
    "I = 0 … N-1)"
)
#: Longest account of a node's value in a message (a node config may hold long strings).
_MAX_SHOWN = 300


class FederationError(RuntimeError):
    """The SuperNodes a run needs are not there (or do not agree on the partitions)."""


@dataclass(frozen=True)
class ReceivedUpdate:
    """What the server received from one client in one round, one row per class.

    Parameters
    ----------
    round : int
        The round.
    masked : bool
        False: the client's update in the clear, its new weights minus the
        global weights the server sent (in the scaled feature space), shape
        ``(rows, n_features)``. True: the same positions of the client's SecAgg+
        masked vector, as fractions of the modulus in ``[0, 1)``; that is all
        the server can read of one client under secure aggregation.
    weights : ndarray of float32
        The values, ``(rows, n_features)``.
    """

    round: int
    masked: bool
    weights: np.ndarray

    def to_json(self) -> dict:
        """A compact JSON form: one byte per weight (base64), scaled per row.

        Clear updates map ``[-max|w|, max|w|]`` of each row to ``[1, 255]``
        (128 is zero); masked values map ``[0, 1)`` to ``[0, 255]``.
        """
        weights = np.asarray(self.weights, dtype=np.float64)
        if self.masked:
            levels = np.floor(weights * 256)
        else:
            peak = np.abs(weights).max(axis=1, keepdims=True)
            levels = 128 + np.round(127 * weights / np.where(peak > 0, peak, 1.0))
        data = np.clip(levels, 0, 255).astype(np.uint8)
        return {
            "round": self.round,
            "masked": self.masked,
            "rows": int(data.shape[0]),
            "features": int(data.shape[1]),
            "levels": base64.b64encode(data.tobytes()).decode("ascii"),
        }

    @classmethod
    def from_json(cls, value: dict) -> ReceivedUpdate:
        """Read :meth:`to_json`'s form back: clear rows in ``[-1, 1]``, masked ones in ``[0, 1)``."""
        rows, features = int(value["rows"]), int(value["features"])
        data = np.frombuffer(base64.b64decode(value["levels"]), dtype=np.uint8)
        if data.size != rows * features:
            raise ValueError(f"expected {rows}×{features} levels, got {data.size}")
        levels = data.reshape(rows, features).astype(np.float32)
        weights = levels / 256 if value["masked"] else (levels - 128) / 127
        return cls(round=int(value["round"]), masked=bool(value["masked"]), weights=weights)


@dataclass(frozen=True)
class Federation:
    """The SuperNodes of a run: one per partition, ``node_ids[i]`` holds partition ``i``."""

    node_ids: tuple[int, ...]

    @property
    def size(self) -> int:
        return len(self.node_ids)


def discover_federation(
    grid: Grid,
    expected: int | None,
    wait_seconds: float,
    say: Callable[[str], None] = print,
) -> Federation:
    """Wait for one SuperNode per partition, asking each which partition it holds.

    Parameters
    ----------
    grid : Grid
        Flower's grid of the run.
    expected : int or None
        The number of clients the run asks for; None: as many as the
        SuperNodes' node config says (``num-partitions``).
    wait_seconds : float
        How long to wait for the SuperNodes before giving up.
    say : callable, default=print
        Where to report what the wait is waiting for.

    Returns
    -------
    Federation
        The node of each partition ``0 … n-1``.

    Raises
    ------
    FederationError
        After ``wait_seconds`` without every partition, or if the SuperNodes
        disagree on the number of partitions; the message says what is missing.
        A SuperNode whose node config is out of range (``num-partitions``
        outside :data:`NUM_PARTITIONS`, ``partition-id`` outside
        ``0 … num-partitions-1``) is not an error: it is left out, and ``say``
        names it, its value and the valid range.
    """
    deadline = time.monotonic() + wait_seconds
    partitions: dict[int, tuple[int, int | None]] = {}  # node → (partition-id, num-partitions)
    left_out: set[int] = set()  # nodes whose node config is out of range: never asked again
    asked: dict[int, float] = {}  # node → when it was last asked
    next_report = 0.0
    while True:
        connected = set(grid.get_node_ids())
        now = time.monotonic()
        unanswered = connected - set(partitions) - left_out
        ask = [n for n in unanswered if n not in asked or now - asked[n] >= WAIT_REPORT_SECONDS]
        if ask:
            if first := [n for n in ask if n not in asked]:
                say(f"Asking {len(first)} SuperNode(s) which partition they hold …")
            asked.update((n, now) for n in ask)
            budget = min(QUERY_TIMEOUT_SECONDS, max(1.0, deadline - now))
            for node, record in _ask_partitions(grid, ask, timeout=budget).items():
                try:
                    partitions[node] = _read_partition(record, expected)
                except SettingError as exc:
                    left_out.add(node)
                    problem = str(exc) if len(str(exc)) <= _MAX_SHOWN else str(exc)[:_MAX_SHOWN] + " …"
                    say(f"SuperNode {node} is left out of the federation, its node config is out of range: "
                        f"{problem} To take part, it must be started with {_NODE_CONFIG}.")
        present = {node: partitions[node] for node in connected if node in partitions}
        wanted = _agreed_partitions(present, expected)
        holders = _holders(present, wanted)
        if wanted is not None and len(holders) == wanted:
            say(f"Federation ready: {wanted} SuperNodes, one per partition.")
            return Federation(tuple(holders[i] for i in range(wanted)))
        status = _waiting_status(len(connected), wanted, holders, len(left_out & connected))
        now = time.monotonic()
        if now >= deadline:
            raise FederationError(
                f"Gave up after {wait_seconds:g} s waiting for the SuperNodes: {status}. Start one SuperNode "
                f"per partition with {_NODE_CONFIG}, or raise the run-config key node-wait-seconds."
            )
        if now >= next_report:
            say(f"Waiting for SuperNodes: {status}; giving up in {deadline - now:.0f} s.")
            next_report = now + WAIT_REPORT_SECONDS
        time.sleep(min(1.0, max(0.0, deadline - now)))


def wait_for_nodes(grid: Grid, count: int, wait_seconds: float) -> Federation:
    """Wait for ``count`` nodes (a simulation's virtual SuperNodes), without asking their partitions."""
    deadline = time.monotonic() + wait_seconds
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() >= deadline:
            raise FederationError(
                f"Gave up after {wait_seconds:g} s: {len(nodes)} of {count} nodes connected."
            )
        time.sleep(0.2)
    return Federation(tuple(nodes[:count]))


def _ask_partitions(grid: Grid, nodes: Iterable[int], timeout: float) -> dict[int, ConfigRecord]:
    """What each node that answered in time says about its partition (as it said it: unchecked)."""
    messages = [Message(content=RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
                for node in nodes]
    answers = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error() or PARTITION_RECORD not in reply.content.config_records:
            continue
        answers[reply.metadata.src_node_id] = reply.content.config_records[PARTITION_RECORD]
    return answers


def _read_partition(record: ConfigRecord, expected: int | None) -> tuple[int, int | None]:
    """A node's ``(partition-id, num-partitions)``, each checked against its range before any use.

    ``num-partitions`` has the bound of ``num_clients`` (:data:`NUM_PARTITIONS`);
    ``partition-id`` is in ``0 … N-1``, where N is the node's ``num-partitions``,
    else the run's ``expected``, else the largest number of clients. A node
    that trains on its own data holds :data:`ANY_PARTITION`.

    Raises
    ------
    SettingError
        Naming the key, the node's value and the valid range.
    """
    if OWN_DATA in record:
        return ANY_PARTITION, None
    total = record.get("num-partitions")
    if total is not None:
        total = NUM_PARTITIONS.check("num-partitions", total)
    partitions = total or expected or NUM_PARTITIONS.high
    partition_id = Whole(0, partitions - 1).check("partition-id", record.get("partition-id", 0))
    return partition_id, total


def _agreed_partitions(present: dict[int, tuple[int, int | None]], expected: int | None) -> int | None:
    """The number of partitions: ``expected`` if the run names one, else what the SuperNodes say."""
    totals = {total for _, total in present.values() if total is not None}
    if expected is not None:
        if totals - {expected}:
            raise FederationError(
                f"The run asks for num-clients={expected}, but SuperNodes hold one of "
                f"{', '.join(map(str, sorted(totals)))} partitions: start them with "
                f"num-partitions={expected} or leave num-clients out of the run config."
            )
        return expected
    if len(totals) > 1:
        raise FederationError(
            f"The SuperNodes disagree on the number of partitions ({', '.join(map(str, sorted(totals)))}); "
            "start every SuperNode with the same num-partitions."
        )
    if present and not totals:
        raise FederationError(
            "The SuperNodes do not say how many partitions there are: start them with --node-config "
            "\"partition-id=I num-partitions=N\", or set the run-config key num-clients (for SuperNodes "
            "that bring their own drawings: how many will join)."
        )
    return totals.pop() if totals else None


def _holders(present: dict[int, tuple[int, int | None]], wanted: int | None) -> dict[int, int]:
    """The first node seen for each partition ``0 … wanted-1``."""
    holders: dict[int, int] = {}
    for node in sorted(present):
        partition = present[node][0]
        if wanted is not None and 0 <= partition < wanted:
            holders.setdefault(partition, node)
    # Nodes that train on their own data take the partitions left free, in the order they connected.
    free = (i for i in range(wanted or 0) if i not in holders)
    for node in sorted(n for n, (partition, _) in present.items() if partition == ANY_PARTITION):
        slot = next(free, None)
        if slot is None:
            break
        holders[slot] = node
    return holders


def _waiting_status(connected: int, wanted: int | None, holders: dict[int, int], left_out: int = 0) -> str:
    """``wanted`` is within :data:`NUM_PARTITIONS` (the run's or a checked node config's)."""
    out = f", {left_out} left out for their node config" if left_out else ""
    if wanted is None:
        nobody = "no other" if left_out else "none"
        return (f"{connected} connected{out}, {nobody} has said which partition it holds yet "
                "(a SuperNode answers once its ClientApp has started)")
    missing = [str(i) for i in range(wanted) if i not in holders]
    return (f"{len(holders)} of {wanted} partitions have a SuperNode ({connected} connected{out}); "
            f"missing partition {', '.join(missing)}")


class FederationGrid(Grid):
    """Flower's grid, restricted to the federation's nodes, with bounded exchanges and a record.

    Strategies and workflows sample from :meth:`get_node_ids`, so a SuperNode
    that is not part of the federation (a second one for the same partition,
    say) is never sent anything. An exchange without a timeout of its own gets
    ``timeout``: a node that never answers counts as dropped out instead of
    stalling the run. Of every training exchange the grid keeps what the
    server received from one client (the federation's first node) and which
    clients did not answer; :meth:`take_round` hands them over.

    Parameters
    ----------
    grid : Grid
        Flower's grid of the run.
    federation : Federation
        Its nodes.
    timeout : float
        Longest wait for the replies of one exchange, in seconds.
    """

    def __init__(self, grid: Grid, federation: Federation, timeout: float):
        self._grid = grid
        self.members = frozenset(federation.node_ids)
        self.timeout = timeout
        self._observed = federation.node_ids[0]
        self._received: dict[int, ReceivedUpdate] = {}
        self._dropped: dict[int, set[int]] = defaultdict(set)

    def set_run(self, run) -> None:  # noqa: ANN001 - Flower's Run
        self._grid.set_run(run)

    @property
    def run(self):  # noqa: ANN201 - Flower's Run
        return self._grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:  # noqa: ANN001
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> list[int]:
        return [node for node in self._grid.get_node_ids() if node in self.members]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Push ``messages``, then collect their replies until all came or the timeout passed.

        As Flower's grids do, but asking for replies every :data:`PULL_SECONDS`.
        """
        sent = list(messages)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        waiting = set(self._grid.push_messages(sent))
        replies: list[Message] = []
        while waiting:
            arrived = list(self._grid.pull_messages(list(waiting)))
            replies += arrived
            waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                break
            time.sleep(min(PULL_SECONDS, left))
        self._note(sent, replies)
        return replies

    def take_round(self, server_round: int) -> tuple[ReceivedUpdate | None, int]:
        """What the observed client sent in ``server_round`` and how many clients dropped out."""
        return self._received.pop(server_round, None), len(self._dropped.pop(server_round, ()))

    def _note(self, sent: list[Message], replies: list[Message]) -> None:
        training = {m.metadata.dst_node_id: m for m in sent if m.metadata.message_type == MessageType.TRAIN}
        if not training:
            return
        server_round = _round_of(next(iter(training.values())))
        answered = {r.metadata.src_node_id: r for r in replies if not r.has_error()}
        self._dropped[server_round] |= set(training) - set(answered)
        if self._observed in training and self._observed in answered:
            update = _received_update(server_round, training[self._observed], answered[self._observed])
            if update is not None:
                self._received[server_round] = update


def _round_of(message: Message) -> int:
    """The round a training message belongs to (workflows set group_id, strategies the config)."""
    if message.metadata.group_id.isdigit():
        return int(message.metadata.group_id)
    config = message.content.config_records.get("config", ConfigRecord())
    return int(config.get("server-round", 0))


def _weight_matrix(arrays: list[np.ndarray]) -> np.ndarray | None:
    """The coefficient matrix (one row per class) among a model's arrays."""
    return next((a for a in arrays if a.ndim == 2), None)


def _received_update(server_round: int, sent: Message, reply: Message) -> ReceivedUpdate | None:
    configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
    if configs is not None and Key.MASKED_PARAMETERS in configs:
        masked = _weight_matrix([bytes_to_ndarray(b) for b in configs[Key.MASKED_PARAMETERS]])
        if masked is None:
            return None
        fractions = masked.astype(np.float64) / SECAGG_MODULUS
        return ReceivedUpdate(server_round, True, fractions.astype(np.float32))
    if "arrays" in reply.content.array_records and "arrays" in sent.content.array_records:
        new = _weight_matrix(reply.content.array_records["arrays"].to_numpy_ndarrays())
        old = _weight_matrix(sent.content.array_records["arrays"].to_numpy_ndarrays())
        if new is None or old is None or new.shape != old.shape:
            return None
        return ReceivedUpdate(server_round, False, (new - old).astype(np.float32))
    return None
