"""The Classroom tab: the room is the federation. A teacher's console, and a participant's drawing pad."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import segno

from story import DemoSession
from story.forms import DEFAULT_CLASS_ROUNDS, class_rounds_bounds
from ui import figures
from ui.common import (
    CLASS_DRAWINGS,
    LIGHT,
    POLLS,
    TRAINING,
    DemoContext,
    lenient,
    pipeline_status,
    select_brush_js,
)
from ui.errors import USER_ERRORS, user_errors
from ui.files import serve_file
from ui.inference_tab import BRUSH_PX, SKETCH_SIZE

#: Selects the class sketchpad's brush (after joining, and after each drawing clears the canvas).
SELECT_BRUSH_JS = select_brush_js("class-sketch")
#: How often a participant's page asks how the class run goes (seconds): a room of phones polls at once.
PARTICIPANT_REFRESH_SECONDS = 5.0
#: The columns of the class run's table, a row per round.
ROUND_COLUMNS = ("round", "MNIST test", "room's held-back drawings", "dropped")
#: How often the teacher's console refreshes (seconds): live on a projector, cheap for the app.
CONSOLE_REFRESH_SECONDS = 3.0

SERVER_VIEW = (
    "**What a real federation's server would see.** This console is the demo's all-seeing view: "
    "the nicknames, drawing counts and label charts come from the app, which here holds everyone's "
    "drawings. A real Flower server sees none of that: only that a client answered, and, with secure "
    "aggregation, the masked sum of the clients' updates (every client counts once, so not even "
    "how many digits each drew). Run it for real: each participant exports their drawings and joins "
    "with their own Flower SuperNode (README → *The class on their own machines*)."
)


@dataclass
class Teacher:
    title: gr.Textbox
    open_button: gr.Button
    code_html: gr.HTML
    teacher_key: gr.Textbox
    people: gr.Dataframe
    labels: gr.Plot
    rounds: gr.Slider
    secure_aggregation: gr.Checkbox
    differential_privacy: gr.Checkbox
    train_button: gr.Button
    train_md: gr.Markdown
    train_log: gr.Dataframe
    status_json: gr.JSON
    timer: gr.Timer


@dataclass
class Participant:
    code: gr.Textbox
    nickname: gr.Textbox
    join_button: gr.Button
    joined_md: gr.Markdown
    prompt_md: gr.Markdown
    label: gr.Number
    sketch: gr.Sketchpad
    add_button: gr.Button
    counts: gr.Dataframe
    delete_button: gr.Button
    leave_button: gr.Button
    export_button: gr.Button
    export_file: gr.File
    use_button: gr.Button
    compare_button: gr.Button
    compare_md: gr.Markdown
    result_json: gr.JSON
    run_md: gr.Markdown
    run_log: gr.Dataframe
    progress_json: gr.JSON
    timer: gr.Timer


def join_url(request: gr.Request | None, join_path: str) -> str:
    """The address participants open: this page's host, with the class code."""
    headers = getattr(request, "headers", {}) or {}
    host = headers.get("x-forwarded-host") or headers.get("host") or "127.0.0.1:7860"
    scheme = headers.get("x-forwarded-proto") or "http"
    return f"{scheme}://{host}/{join_path}"


def code_html(code: str, url: str) -> str:
    """The code in letters a back row can read, the QR code of the join link, and the link."""
    qr = segno.make(url, error="m").svg_data_uri(scale=6, dark="#111", light="#fff")
    return (
        f"<div class='class-code'><div><div class='class-code-label'>Join code</div>"
        f"<div class='class-code-value'>{escape(code)}</div><div class='class-code-url'>{escape(url)}</div>"
        f"</div><img alt='QR code of the join link' src='{qr}'></div>"
    )


def people_table(status: dict[str, Any]) -> pd.DataFrame:
    rows = [[p["nickname"], p["drawings"], " ".join(str(n) for n in p["per_label"])]
            for p in status.get("per_participant", [])]
    return pd.DataFrame(rows, columns=["participant", "drawings", "per digit 0–9"])


def labels_figure(status: dict[str, Any]) -> Any:
    """The room's label distribution, one stacked bar per participant (None before anyone joined)."""
    rows = [p["per_label"] for p in status.get("per_participant", [])]
    if not rows:
        return None
    return figures.label_distribution_figure(np.array(rows), [str(d) for d in range(len(rows[0]))])


def rounds_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    table = [[r["round"], f"{r['accuracy_test']:.1%}",
              "" if r.get("accuracy_room") is None else f"{r['accuracy_room']:.1%}",
              r.get("dropped_clients", 0)]
             for r in rows]
    return pd.DataFrame(table, columns=list(ROUND_COLUMNS))


def summary_markdown(summary: dict[str, Any]) -> str:
    left = f" {', '.join(summary['left'])} left during the training (dropped)." if summary.get("left") else ""
    return (
        f"### Class model: reads **{summary['accuracy_room']:.1%}** of the room's held-back drawings "
        f"(MNIST model: {summary['accuracy_room_before']:.1%})\n\n"
        f"MNIST's test split: {summary['accuracy_test']:.1%} "
        f"(MNIST model: {summary['accuracy_test_before']:.1%}). "
        f"{summary['clients']} participants + {summary['reference_clients']} reference clients holding "
        f"MNIST images, {summary['seconds']:.1f} s"
        f"{', secure aggregation' if summary['secure_aggregation'] else ''}.{left}\n\n"
        "Everyone can now press **Use the class model** and go on through tabs 2–4."
    )


@dataclass
class Classroom:
    """The tab's two panels, and the tabs that switch between them."""

    tabs: gr.Tabs
    participant: Participant
    teacher: Teacher


def run_markdown(view: dict[str, Any]) -> str:
    """The class run as a participant's phone shows it."""
    state, rows = view["state"], view["rounds"]
    if state == "collecting":
        return (f"**The class model:** not trained yet ({view['participants']} in the room). Keep drawing; "
                "the teacher starts the training.")
    if state == "failed":
        return "**The class model:** the training failed; the teacher can start it again."
    if state == "training":
        done = f"round {rows[-1]['round']} done" if rows else "starting"
        left = view["left_during_training"]
        dropped = f"; dropped: {', '.join(left)}" if left else ""
        return f"**The class model is training** ({done}{dropped}) …"
    return summary_markdown(view["result"]) if view["result"] else "**The class model** is trained."


def build(ctx: DemoContext) -> Classroom:
    """Create the Classroom tab inside the current ``gr.Tab``."""
    gr.Markdown(
        "## The room is the federation\nEveryone draws digits on their own phone; a class model is "
        "trained with one Flower client per participant, each on their own drawings, which never leave "
        "the app's memory for anyone else's (and can stay on your own machine: export them and join "
        "with a Flower SuperNode)."
    )
    with gr.Tabs(selected="class-participant") as tabs:
        with gr.Tab("Join and draw", id="class-participant"):
            participant = _participant_panel()
        with gr.Tab("Teacher's console", id="class-teacher"):
            teacher = _teacher_panel()
    _wire_participant(ctx, participant)
    _wire_progress(ctx, participant)
    _wire_class_model(ctx, participant)
    _wire_teacher(ctx, teacher)
    return Classroom(tabs, participant, teacher)


def show_resumed_place(ctx: DemoContext, classroom: Classroom, started: Any, page_tabs: gr.Tabs) -> None:
    """After a reload, show the page's class again: the teacher's console, or the seat and its drawings.

    Parameters
    ----------
    ctx : DemoContext
        The session state.
    classroom : Classroom
        The tab's components.
    started : gradio event
        The page's start (which resumed the session), to run after.
    page_tabs : gr.Tabs
        The page's tabs (the Classroom tab is brought to the front).
    """
    p, t = classroom.participant, classroom.teacher

    def resumed_place(state: DemoSession | None = None, request: gr.Request = None):
        place = state.class_place() if state is not None else {"teaching": None, "seat": None}
        teaching, seat = place["teaching"], place["seat"]
        if teaching is None and seat is None:
            return (gr.skip(),) * 13
        console = (code_html(teaching["class_code"], join_url(request, teaching["join_path"])),
                   teaching["teacher_key"], gr.Timer(active=True)) if teaching else (gr.skip(),) * 3
        if seat is None:
            drawing = (gr.skip(),) * 7
        else:
            text = f"You are **{seat['nickname']}** in class **{seat['class_code']}** (back after a reload)."
            drawing = (seat["class_code"], seat["nickname"], text, _prompt(seat["next_label"]),
                       seat["next_label"], _counts(seat["per_label"]), gr.Timer(active=True))
        selected = "class-participant" if seat is not None else "class-teacher"
        return (*console, *drawing, gr.Tabs(selected=selected), gr.Tabs(selected="classroom"), state)

    started.then(resumed_place, [ctx.state],
                 [t.code_html, t.teacher_key, t.timer, p.code, p.nickname, p.joined_md, p.prompt_md, p.label,
                  p.counts, p.timer, classroom.tabs, page_tabs, ctx.state],
                 api_visibility="private", show_progress="hidden", queue=False
                 ).then(None, None, None, js=SELECT_BRUSH_JS)


def _participant_panel() -> Participant:
    with gr.Row():
        code = gr.Textbox(label="Class code", max_length=12, placeholder="e.g. K7QF2M", scale=1)
        nickname = gr.Textbox(label="Nickname", max_length=24, placeholder="a pseudonym", scale=1)
        join_button = gr.Button("Join", variant="primary", scale=0)
    joined_md = gr.Markdown()
    prompt_md = gr.Markdown("### Join a class to draw", elem_id="class-prompt")
    with gr.Row():
        with gr.Column(scale=2):
            sketch = gr.Sketchpad(
                label="Your digit", show_label=False, type="numpy", image_mode="RGBA",
                canvas_size=(SKETCH_SIZE, SKETCH_SIZE), height=SKETCH_SIZE + 80, width=SKETCH_SIZE + 40,
                brush=gr.Brush(default_size=BRUSH_PX, colors=["#000000"], color_mode="fixed"),
                layers=False, transforms=(), elem_id="class-sketch",
            )
            sketch.clear(None, None, None, js=SELECT_BRUSH_JS)  # "Clear canvas" leaves no tool selected
            with gr.Row():
                label = lenient(gr.Number(value=0, precision=0, minimum=0, maximum=9, label="Its digit"))
                add_button = gr.Button("Add this drawing", variant="primary")
        with gr.Column(scale=1):
            counts = gr.Dataframe(headers=[str(d) for d in range(10)], label="Your drawings per digit",
                                  interactive=False)
            with gr.Row():
                delete_button = gr.Button("Delete my drawings", size="sm")
                leave_button = gr.Button("Leave the class", size="sm", variant="stop")
            export_button = gr.Button("Export my drawings (for my own Flower SuperNode)", size="sm")
            export_file = gr.File(label="my-drawings.npz", interactive=False, visible=False)
    with gr.Row():
        use_button = gr.Button("Use the class model (then tabs 2–4)")
        compare_button = gr.Button("Read my drawing with both models")
    compare_md = gr.Markdown()
    result_json = gr.JSON(visible=False)
    run_md = gr.Markdown(elem_id="class-run")
    run_log = gr.Dataframe(headers=list(ROUND_COLUMNS), label="The class run, round by round",
                           interactive=False, visible=False)
    progress_json = gr.JSON(visible=False)
    timer = gr.Timer(PARTICIPANT_REFRESH_SECONDS, active=False)
    return Participant(code, nickname, join_button, joined_md, prompt_md, label, sketch, add_button, counts,
                       delete_button, leave_button, export_button, export_file, use_button, compare_button,
                       compare_md, result_json, run_md, run_log, progress_json, timer)


def _teacher_panel() -> Teacher:
    with gr.Row():
        title = gr.Textbox(label="Class title", value="", max_length=60, placeholder="Our class", scale=3)
        open_button = gr.Button("Open a class", variant="primary", scale=1)
    code = gr.HTML(elem_id="class-code")
    with gr.Accordion("Teacher key (only this page holds it; needed to script the console)", open=False):
        teacher_key = gr.Textbox(label="Teacher key", type="password", interactive=False)
    with gr.Row():
        people = gr.Dataframe(headers=["participant", "drawings", "per digit 0–9"], label="Who has joined",
                              interactive=False, max_height=320)
        labels = gr.Plot(label="The room's drawings per digit and participant", format="png")
    gr.Markdown(SERVER_VIEW)
    with gr.Row():
        rounds = lenient(gr.Slider(*class_rounds_bounds(), value=DEFAULT_CLASS_ROUNDS, step=1,
                                   label="Rounds"))
        secure_aggregation = gr.Checkbox(value=True, label="Secure aggregation (SecAgg+)")
        differential_privacy = gr.Checkbox(value=False, label="Differential privacy")
    train_button = gr.Button("Train the class model", variant="primary")
    train_md = gr.Markdown()
    train_log = gr.Dataframe(headers=list(ROUND_COLUMNS), label="Rounds", interactive=False)
    status_json = gr.JSON(visible=False)
    timer = gr.Timer(CONSOLE_REFRESH_SECONDS, active=False)
    return Teacher(title, open_button, code, teacher_key, people, labels, rounds, secure_aggregation,
                   differential_privacy, train_button, train_md, train_log, status_json, timer)


def _prompt(next_label: int) -> str:
    return f"### Draw a **{next_label}**, then press *Add this drawing*"


def _counts(per_label: list[int]) -> pd.DataFrame:
    return pd.DataFrame([per_label], columns=[str(d) for d in range(10)])


def _wire_participant(ctx: DemoContext, p: Participant) -> None:
    @user_errors
    def class_join(class_code: str, nickname: str, state: DemoSession | None = None,
                   request: gr.Request = None):
        """Join a class with its code and a nickname (API: /class_join)."""
        session = ctx.session(state, request)
        joined = session.join_class(class_code, nickname)
        text = f"You are **{joined['nickname']}** in class **{joined['class_code']}**."
        return joined, text, _prompt(joined["next_label"]), 0, _counts([0] * 10), session

    p.join_button.click(class_join, [p.code, p.nickname, ctx.state],
                        [p.result_json, p.joined_md, p.prompt_md, p.label, p.counts, ctx.state],
                        api_name="class_join", show_progress="hidden", **LIGHT
                        ).success(lambda: gr.Timer(active=True), None, [p.timer], js=SELECT_BRUSH_JS,
                                  api_visibility="private", queue=False)


    @user_errors
    def class_add_drawing(drawing: Any = None, label: int = 0, state: DemoSession | None = None,
                          request: gr.Request = None):
        """Add one labelled drawing to your class (API: /class_add_drawing)."""
        session = ctx.session(state, request)
        added = session.add_class_drawing(drawing, label)
        return (added, _prompt(added["next_label"]), added["next_label"], _counts(added["per_label"]),
                gr.update(value=None), session)

    p.add_button.click(class_add_drawing, [p.sketch, p.label, ctx.state],
                       [p.result_json, p.prompt_md, p.label, p.counts, p.sketch, ctx.state],
                       api_name="class_add_drawing", show_progress="hidden", **CLASS_DRAWINGS
                       ).success(None, None, None, js=SELECT_BRUSH_JS)

    @user_errors
    def class_delete_drawings(state: DemoSession | None = None, request: gr.Request = None):
        """Delete your drawings, staying in the class (API: /class_delete_drawings)."""
        session = ctx.session(state, request)
        deleted = session.delete_class_drawings()
        return deleted, f"✓ {deleted['message']}", _counts([0] * 10), _prompt(0), 0, session

    p.delete_button.click(class_delete_drawings, [ctx.state],
                          [p.result_json, p.joined_md, p.counts, p.prompt_md, p.label, ctx.state],
                          api_name="class_delete_drawings", show_progress="hidden", **LIGHT)

    @user_errors
    def class_leave(state: DemoSession | None = None, request: gr.Request = None):
        """Leave the class: your drawings are deleted from the host at once (API: /class_leave)."""
        session = ctx.session(state, request)
        left = session.leave_class()
        return (left, f"✓ {left['message']}", _counts([0] * 10), "### Join a class to draw", "",
                gr.update(visible=False), gr.Timer(active=False), session)

    p.leave_button.click(class_leave, [ctx.state],
                         [p.result_json, p.joined_md, p.counts, p.prompt_md, p.run_md, p.run_log, p.timer,
                          ctx.state],
                         api_name="class_leave", show_progress="hidden", **LIGHT)

    @user_errors
    def class_export_drawings(state: DemoSession | None = None, request: gr.Request = None):
        """Your drawings as a file for your own Flower SuperNode (API: /class_export_drawings)."""
        session = ctx.session(state, request)
        path = session.export_class_drawings()
        return gr.update(value=serve_file(session, path), visible=True), session

    p.export_button.click(class_export_drawings, [ctx.state], [p.export_file, ctx.state],
                          api_name="class_export_drawings", show_progress="hidden", **LIGHT)


    def code_from_link(request: gr.Request):
        params = getattr(request, "query_params", {}) or {}
        code = params.get("class", "")
        return gr.update(value=code) if code else gr.skip()

    ctx.demo.load(code_from_link, None, [p.code], api_visibility="private", queue=False)


def _wire_class_model(ctx: DemoContext, p: Participant) -> None:
    """A participant takes the class model as their own, or reads a drawing with both models."""

    @user_errors
    def class_use_model(state: DemoSession | None = None, request: gr.Request = None):
        """Make the class model your current model, then go on in tabs 2-4 (API: /class_use_model)."""
        session = ctx.session(state, request)
        summary = session.use_class_model_now()
        text = (f"✓ The class model is your current model ({summary['accuracy']:.1%} on MNIST's test split). "
                "Go on in tab 2 (compile), then 3 and 4.")
        return summary, text, pipeline_status(session), session

    p.use_button.click(class_use_model, [ctx.state], [p.result_json, p.compare_md, ctx.pipeline, ctx.state],
                       api_name="class_use_model", show_progress="hidden", **LIGHT)

    @user_errors
    def class_compare(drawing: Any = None, state: DemoSession | None = None, request: gr.Request = None):
        """Your drawing read by the MNIST model and by the class model (API: /class_compare)."""
        session = ctx.session(state, request)
        read = session.compare_class_models(drawing)
        text = (f"The MNIST model reads **{read['mnist_prediction']}**; the class model reads "
                f"**{read['class_prediction']}**.")
        return read, text, session

    p.compare_button.click(class_compare, [p.sketch, ctx.state], [p.result_json, p.compare_md, ctx.state],
                           api_name="class_compare", show_progress="hidden", **LIGHT)


def _wire_progress(ctx: DemoContext, p: Participant) -> None:
    """Every participant's page follows the class run (from joining until leaving)."""

    def class_progress(state: DemoSession | None = None):
        """How the class run goes, round by round, as a participant sees it (API: /class_progress)."""
        if state is None or state.seat is None:
            return {}, "", gr.update(visible=False), gr.Timer(active=False)
        try:
            view = state.class_progress()
        except USER_ERRORS as exc:  # the class closed or expired: say so once, and stop asking
            return {"error": str(exc)}, f"⚠ {exc}", gr.update(visible=False), gr.Timer(active=False)
        rows = view["rounds"]
        table = gr.update(value=rounds_table(rows), visible=True) if rows else gr.update(visible=False)
        return view, run_markdown(view), table, gr.skip()

    p.timer.tick(class_progress, [ctx.state], [p.progress_json, p.run_md, p.run_log, p.timer],
                 api_name="class_progress", show_progress="hidden", **POLLS)


def _wire_teacher(ctx: DemoContext, t: Teacher) -> None:
    @user_errors
    def class_open(title: str = "", state: DemoSession | None = None, request: gr.Request = None):
        """Open a class: its join code, QR code and teacher key (API: /class_open)."""
        session = ctx.session(state, request)
        opened = session.open_class(title)
        url = join_url(request, opened["join_path"])
        opened = {**opened, "join_url": url}
        return (opened, code_html(opened["class_code"], url), opened["teacher_key"], gr.Timer(active=True),
                session)

    t.open_button.click(class_open, [t.title, ctx.state],
                        [t.status_json, t.code_html, t.teacher_key, t.timer, ctx.state],
                        api_name="class_open", show_progress="hidden", **LIGHT)

    @user_errors
    def class_status(teacher_key: str = "", state: DemoSession | None = None, request: gr.Request = None):
        """The console: who joined, their drawings, the room's labels, the run (API: /class_status)."""
        session = ctx.session(state, request)
        status = session.class_status(teacher_key)
        rows = status.get("rounds") or []
        return (status, people_table(status), labels_figure(status),
                rounds_table(rows) if rows else gr.skip(), session)

    t.timer.tick(class_status, [t.teacher_key, ctx.state],
                 [t.status_json, t.people, t.labels, t.train_log, ctx.state],
                 api_name="class_status", show_progress="hidden", **LIGHT)

    @user_errors
    def class_train(teacher_key: str = "", num_rounds: int = DEFAULT_CLASS_ROUNDS,
                    secure_aggregation: bool = True, differential_privacy: bool = False,
                    state: DemoSession | None = None,
                    request: gr.Request = None):
        """Train the class model, one Flower client per participant (API: /class_train)."""
        session = ctx.session(state, request)
        rows: list[dict[str, Any]] = []
        yield {}, "Starting the class training …", gr.skip(), session
        settings = {"num_rounds": num_rounds, "secure_aggregation": secure_aggregation,
                    "differential_privacy": differential_privacy}
        for item in session.train_class(teacher_key, **settings):
            if isinstance(item, dict) and "round" in item:
                rows.append(item)
                yield gr.skip(), f"Round {item['round']} of {num_rounds} …", rounds_table(rows), session
            elif isinstance(item, dict):
                yield item, summary_markdown(item), rounds_table(rows), session
            else:
                waiting = f"Waiting for the training runtime: {item.position} ahead."
                yield gr.skip(), waiting, gr.skip(), session

    t.train_button.click(class_train, [t.teacher_key, t.rounds, t.secure_aggregation, t.differential_privacy,
                                       ctx.state], [t.status_json, t.train_md, t.train_log, ctx.state],
                         api_name="class_train", show_progress="minimal", **TRAINING)
