"""Tab 1's view of what the server receives, through the real handlers: /train (real Flower,
in the clear then with secure aggregation) and the panel that follows it."""

from __future__ import annotations

import pytest
from matplotlib.figure import Figure

from story.updates import ServerViews
from tests.helpers import SMALL_TRAINING, handler, handler_named

# `app` (tests/ui/conftest.py): the demo's Blocks and registry, not launched; one per module.


def train(demo, session, **settings) -> dict:
    """Drain the /train handler; return the summary it ends with."""
    items = list(handler(demo, "train")(**SMALL_TRAINING, **settings, state=session))
    return items[-1][0]


def panel_handler(demo):
    return handler_named(demo, "show_server_view")


def test_the_panel_shows_clear_updates_then_masked_ones_and_the_same_model(app):
    demo, registry = app
    session = registry.new_session()
    show = panel_handler(demo)

    summary = train(demo, session)
    assert summary["secure_aggregation"] is False and summary["dropped_clients"] == 0
    clear_plot, secure_plot, text, views = show(session, ServerViews())
    assert isinstance(clear_plot, Figure) and secure_plot is None
    assert views.clear.images.shape == (10, 8, 8) and not views.clear.masked
    assert views.clear.resemblance > 0.6  # the server sees what the client's digits look like
    assert "Without secure aggregation" in text and "Train again with secure aggregation" in text

    summary = train(demo, session, secure_aggregation=True)
    assert summary["secure_aggregation"] is True and summary["server_view"]["masked"] is True
    clear_plot, secure_plot, text, views = show(session, views)
    assert isinstance(clear_plot, Figure) and isinstance(secure_plot, Figure)
    assert views.secure.masked and abs(views.secure.resemblance) < 0.25  # noise
    assert views.clear.resemblance > 0.6  # the clear run is still shown beside it
    comparison = views.comparison()
    assert comparison is not None and comparison.same_model
    assert abs(comparison.accuracy_clear - comparison.accuracy_secure) <= 0.005
    assert "Same model either way" in text


def test_secure_aggregation_with_a_strategy_that_needs_every_update_is_refused(app):
    import gradio as gr

    demo, registry = app
    session = registry.new_session()
    with pytest.raises(gr.Error, match="fedavg, fedprox, fedadam"):
        train(demo, session, secure_aggregation=True, strategy="fedmedian")
    assert session.model is None


def test_the_panel_has_nothing_to_show_for_an_uploaded_model(app, tmp_path):
    from fl_training.datasets import load_dataset
    from fl_training.model_io import save_model
    from fl_training.task import train_centralized

    demo, registry = app
    session = registry.new_session()
    path = save_model(train_centralized(load_dataset("digits"), max_iter=20), tmp_path / "digits.skops")
    handler(demo, "upload_model")(str(path), "digits", session)
    clear_plot, secure_plot, text, views = panel_handler(demo)(session, ServerViews())
    assert clear_plot is None and secure_plot is None and views == ServerViews()
    assert "No federated training yet" in text
