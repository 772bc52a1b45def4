"""A class as the federation, under load: N participants join at once, draw, train together, then decrypt.

Run by ``python benchmarks/load_test.py --classroom N`` against a running app. Each
participant is its own ``gradio_client`` session with a handwriting of its own
(``class_drawings``: fonts, slants, stroke widths). All join at once and add
``--drawings`` labelled drawings each (0-9 in a shuffled cycle); the teacher trains
the class model (5 rounds, secure aggregation); then every participant makes it
their model and goes through compile, keys, encryption of one of their own new
drawings, the server's run and decryption. Figures: p95 of one add-drawing call,
click → class model, class model → the last decrypted prediction, and the class
model against the MNIST model on the participants' held-back drawings and on
MNIST's test split. An answer of another session is a decrypted prediction that
differs from what ``/class_compare`` reads for the same drawing with the class model.
"""

from __future__ import annotations

import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from class_drawings import drawings, writers
from gradio_client import Client, handle_file
from PIL import Image
from visitors import visitor


@dataclass
class Participant:
    index: int
    client: Client | None = None
    add_seconds: list[float] = field(default_factory=list)
    add_started: list[float] = field(default_factory=list)  # seconds after the participants' common start
    error: str | None = None
    step: str | None = None
    prediction: int | None = None
    class_reads: int | None = None
    done_at: float | None = None


def _sketch(path: Path) -> dict[str, Any]:
    return {"background": None, "layers": [], "composite": handle_file(str(path))}


def run(url: str, participants: int, per_participant: int, rounds: int, verbose: bool = False,
        think_seconds: float = 0.0) -> dict:
    """The whole class; returns the report (errors and figures).

    ``think_seconds``: each participant waits this long (± 50 %, at random) before each drawing,
    the time a person takes to draw a digit; 0 sends every drawing back to back.
    """
    folder = Path(tempfile.mkdtemp(prefix="classroom-load-"))
    hands = writers(participants, seed=7)
    people = [Participant(k) for k in range(participants)]
    teacher = visitor(url)
    opened = teacher.predict(title="Load test", api_name="/class_open")[0]
    code = opened["class_code"]
    began: dict[str, float] = {}
    start = threading.Barrier(participants, action=lambda: began.setdefault("at", time.perf_counter()))

    def join_and_draw(p: Participant) -> None:
        rng = np.random.default_rng(p.index)
        labels = [int(v) for v in rng.permutation(np.resize(np.arange(10), per_participant))]
        images = drawings(hands[p.index], labels + [labels[0]], seed=1000 + p.index)
        for i, image in enumerate(images):
            Image.fromarray(image).save(folder / f"{p.index}-{i}.png")
        p.client = visitor(url)
        start.wait()
        try:
            p.step = "join"
            p.client.predict(class_code=code, nickname=f"p{p.index:02d}", api_name="/class_join")
            p.step = "add drawing"
            for i, label in enumerate(labels):
                if think_seconds:
                    time.sleep(think_seconds * rng.uniform(0.5, 1.5))
                t = time.perf_counter()
                p.client.predict(drawing=_sketch(folder / f"{p.index}-{i}.png"), label=label,
                                 api_name="/class_add_drawing")
                p.add_seconds.append(time.perf_counter() - t)
                p.add_started.append(t - began["at"])
        except Exception as exc:  # reported, not raised: the others go on
            p.error = f"{exc.__class__.__name__}: {exc}"
            if verbose:
                traceback.print_exc()

    with ThreadPoolExecutor(participants) as pool:
        list(pool.map(join_and_draw, people))
    status = teacher.predict(teacher_key=opened["teacher_key"], api_name="/class_status")[0]

    clicked = time.perf_counter()
    summary = teacher.predict(teacher_key=opened["teacher_key"], num_rounds=rounds, secure_aggregation=True,
                              differential_privacy=False, api_name="/class_train")[0]
    trained = time.perf_counter()

    def use_and_decrypt(p: Participant) -> None:
        if p.error is not None:
            return
        new_drawing = _sketch(folder / f"{p.index}-{per_participant}.png")
        try:
            for p.step, kwargs in (("use", {"api_name": "/class_use_model"}),
                                   ("compile", {"n_bits": 8, "api_name": "/compile"}),
                                   ("keygen", {"api_name": "/keygen"}),
                                   ("encrypt", {"sample_index": 0, "source": "drawing",
                                                "drawing": new_drawing, "api_name": "/encrypt"}),
                                   ("run_fhe", {"api_name": "/run_fhe"})):
                p.client.predict(**kwargs)
            p.step = "decrypt"
            p.prediction = p.client.predict(api_name="/decrypt")[0]["prediction"]
            p.done_at = time.perf_counter() - trained
            compared = p.client.predict(drawing=new_drawing, api_name="/class_compare")[0]
            p.class_reads = compared["class_prediction"]
        except Exception as exc:
            p.error = f"{p.step}: {exc.__class__.__name__}: {exc}"
            if verbose:
                traceback.print_exc()

    with ThreadPoolExecutor(participants) as pool:
        list(pool.map(use_and_decrypt, people))
    adds = [s for p in people for s in p.add_seconds]
    done = [p.done_at for p in people if p.done_at is not None]
    return {
        "participants": participants,
        "think_seconds": think_seconds,
        "drawings": status["drawings"],
        "errors": [f"p{p.index:02d} at {p.step}: {p.error}" for p in people if p.error],
        "other_sessions_answers": sum(1 for p in people if p.prediction is not None
                                      and p.prediction != p.class_reads),
        "decrypted": len(done),
        "add_drawing_seconds": {"p50": float(np.percentile(adds, 50)), "p95": float(np.percentile(adds, 95)),
                                "max": float(max(adds))} if adds else {},
        "slowest_add_drawings": [{"started": round(at, 2), "seconds": round(s, 2)} for s, at in sorted(
            ((s, at) for p in people for s, at in zip(p.add_seconds, p.add_started, strict=True)),
            reverse=True)[:10]],
        "click_to_class_model_seconds": trained - clicked,
        "class_model_to_last_decryption_seconds": max(done) if done else None,
        "class_run": {k: summary.get(k) for k in ("clients", "dropped_clients", "held_back_drawings",
                                                  "accuracy_room_before", "accuracy_room",
                                                  "accuracy_test_before", "accuracy_test", "seconds")},
    }
