"""Tab 1's training form: every setting of ``/train``, starting from the app's quick preset."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from story import forms
from ui.common import lenient

#: What the form shows first (``story.forms.TRAINING_FORM``, trained ahead at launch).
START = forms.TRAINING_FORM

PARTITIONING_HELP = {
    "iid": "IID: every client gets a random, similar share of every label.",
    "dirichlet": "Dirichlet: label shares drawn from Dir(alpha); small alpha → very skewed clients.",
    "pathological": "Pathological: each client holds only k labels.",
}


#: The settings' names (``TrainingConfig``'s fields), in the order of :meth:`Settings.inputs`.
FIELDS = ("dataset", "num_clients", "num_rounds", "partitioning", "alpha", "classes_per_client", "strategy",
          "local_epochs", "seed", "differential_privacy", "noise_multiplier", "clipping_norm",
          "secure_aggregation")


@dataclass
class Settings:
    """The training settings' widgets, in the order of ``/train``'s parameters."""

    dataset: gr.Dropdown
    num_clients: gr.Slider
    num_rounds: gr.Slider
    partitioning: gr.Radio
    alpha: gr.Slider
    classes_per_client: gr.Slider
    strategy: gr.Dropdown
    local_epochs: gr.Slider
    seed: gr.Number
    differential_privacy: gr.Checkbox
    noise_multiplier: gr.Slider
    clipping_norm: gr.Slider
    secure_aggregation: gr.Checkbox
    start: gr.Button

    def inputs(self) -> list[gr.components.Component]:
        return [self.dataset, self.num_clients, self.num_rounds, self.partitioning, self.alpha,
                self.classes_per_client, self.strategy, self.local_epochs, self.seed,
                self.differential_privacy, self.noise_multiplier, self.clipping_norm,
                self.secure_aggregation]



def build() -> Settings:
    """The form's widgets, starting from :data:`story.forms.TRAINING_FORM`."""
    dataset = gr.Dropdown(
        list(forms.DATASET_NAMES), value=START.dataset, label="Dataset",
        info="mnist-5k: 5,000 real MNIST digits (offline). digits: 8×8 digits, fastest. "
             "mnist: full MNIST, 70,000 digits (downloaded from openml.org before its first training).",
    )
    with gr.Row():
        num_clients = lenient(gr.Slider(*forms.training_bounds("num_clients"), value=START.num_clients,
                                        step=1,
                                        label="Clients"))
        num_rounds = lenient(gr.Slider(*forms.training_bounds("num_rounds"), value=START.num_rounds, step=1,
                                       label="Rounds"))
    partitioning = gr.Radio(
        list(forms.PARTITIONINGS), value=START.partitioning, label="Partitioning",
        info=PARTITIONING_HELP[START.partitioning],
    )
    with gr.Row():
        # The slider shows the useful part of the range; the API accepts training_bounds("alpha").
        alpha = lenient(gr.Slider(0.05, 10.0, value=START.alpha, step=0.05, label="Dirichlet alpha",
                                  visible=False))
        classes_per_client = lenient(gr.Slider(
            1, 10, value=START.classes_per_client, step=1, label="Classes per client (k)", visible=False
        ))
    with gr.Row():
        strategy = gr.Dropdown(list(forms.STRATEGIES), value=START.strategy, label="Strategy")
        seed = lenient(gr.Number(value=START.seed, label="Seed", precision=0, minimum=0,
                                 maximum=forms.training_bounds("seed")[1]))
    # A row of its own: squeezed beside two other fields, the slider scrolled and cut its maximum.
    local_epochs = lenient(gr.Slider(*forms.training_bounds("local_epochs"),
                                     value=START.local_epochs, step=1, label="Local epochs"))
    with gr.Accordion("Differential privacy", open=False):
        differential_privacy = gr.Checkbox(
            value=START.differential_privacy,
            label="Clip client updates and add Gaussian noise on the server (fedavg)",
        )
        with gr.Row():
            noise_multiplier = lenient(gr.Slider(forms.training_bounds("noise_multiplier")[0], 5.0,
                                                 value=START.noise_multiplier, step=0.1,
                                                 label="Noise multiplier σ"))
            clipping_norm = lenient(gr.Slider(0.1, 20.0, value=START.clipping_norm, step=0.1,
                                              label="Clipping norm C"))
    secure_aggregation = gr.Checkbox(
        value=START.secure_aggregation,
        label="Secure aggregation (SecAgg+): the server only sees the sum of the updates",
        info=f"{', '.join(forms.SECURE_AGGREGATION_STRATEGIES)}; with differential privacy, each client "
             "clips its own update",
    )
    start = gr.Button("Start federated training", variant="primary")
    return Settings(dataset, num_clients, num_rounds, partitioning, alpha, classes_per_client, strategy,
                    local_epochs, seed, differential_privacy, noise_multiplier, clipping_norm,
                    secure_aggregation, start)
