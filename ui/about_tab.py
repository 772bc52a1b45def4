"""Tab 5: how the demo works, who holds what, and what it does not protect against."""

from __future__ import annotations

import gradio as gr

INTRO = """
### Two privacy technologies, one pipeline

1. **Federated learning** ([Flower](https://flower.ai)) — the *training data* stays with each client.
   Clients train locally and send only model weights; the server averages them (FedAvg and friends).
   Optional **differential privacy** clips each update and adds noise, bounding what the final weights
   reveal about any client (ε at δ).
2. **Fully homomorphic encryption** ([Concrete ML](https://docs.zama.ai/concrete-ml)) — the *inference
   input* stays private. The trained model is quantized and compiled into a circuit that runs on
   encrypted integers: the server computes a prediction it cannot read.

The idea follows Zama's demo combining Concrete ML with Flower
([Concrete ML + Flower example](https://github.com/zama-ai/concrete-ml/tree/main/use_case_examples/federated_learning)).

### Who holds what
"""

#: The pipeline as boxes that stack on a phone (instead of a wide ASCII drawing).
PIPELINE_HTML = """
<div class="pipeline-diagram">
  <section><h4>Training clients</h4><ul>
    <li>hold their own data (never sent)</li><li>train locally</li>
    <li><b>send</b> model weights → Flower server</li></ul></section>
  <section><h4>Flower server</h4><ul>
    <li>averages the weights (never sees data)</li>
    <li><b>sends</b> the model → model developer</li></ul></section>
  <section><h4>Model developer</h4><ul>
    <li>compiles the model</li><li>client.zip → the inference client</li>
    <li>server.zip → the FHE server</li></ul></section>
  <section><h4>Inference client</h4><ul>
    <li>client.zip + the <b>private key</b> (never leaves it)</li>
    <li><b>sends</b> evaluation keys → FHE server</li>
    <li><b>sends</b> encrypt(input) → FHE server</li>
    <li>decrypts the encrypted result it gets back</li></ul></section>
  <section><h4>FHE server (HTTP)</h4><ul>
    <li>server.zip (the circuit) and evaluation keys</li>
    <li>runs the circuit on ciphertexts</li><li>cannot decrypt anything</li></ul></section>
</div>
"""

ROLES = """
- **A training client** holds its own training data and the model weights; never a key.
- **The Flower server** holds the model weights; never any training data.
- **The inference client** holds client.zip (quantizers, crypto parameters), the **private key**, the
  evaluation keys, the input and the prediction in clear.
- **The FHE server** holds the circuit (the model's quantized weights), the evaluation keys and
  ciphertexts only: never the private key, never an input or a prediction in clear.

### Threat model of *this* web demo

**The inference client runs on the app's host, for you.** When you press "Generate keys", the host
generates your private key and keeps it in a directory of its own on the host (owner-only permissions,
never served for download, deleted when you close the tab or after an hour idle); it encrypts your
input and decrypts the result there. **Your browser** only shows the results and keeps an opaque
session id (so that a reload resumes your model, with a new private key). So the host *could* see your
keys, your inputs and the decrypted predictions: you must trust whoever runs the app. The **FHE
server** is a separate HTTP service that only ever receives `server.zip`, evaluation keys and
ciphertexts, and forgets this session's keys and circuit when the session ends.

For real privacy, run the client yourself so the keys never leave your machine:

```bash
python -m fhe_model client --server URL
```

It downloads client.zip, keeps the keys on your machine and sends only evaluation keys and ciphertexts.

What FHE does **not** hide: that you made a request, its timing and size, and the model's output to
whoever holds the private key. Federated learning alone does not stop weights from leaking information
about training data; that is what the differential-privacy option is for.

### Links

- Flower: <https://flower.ai/docs/> · Flower simulation: <https://flower.ai/docs/framework/how-to-run-simulations.html>
- Concrete ML: <https://docs.zama.ai/concrete-ml> · deployment (client/server): <https://docs.zama.ai/concrete-ml/guides/client_server>
- The Zama + Flower idea: <https://github.com/zama-ai/concrete-ml/tree/main/use_case_examples/federated_learning>
- Scripting this demo with `gradio_client`: see "Scripting the demo" in the README.
"""


def build() -> None:
    """Create tab 5's content inside the current ``gr.Tab``."""
    gr.Markdown(INTRO)
    gr.HTML(PIPELINE_HTML)
    gr.Markdown(ROLES)
