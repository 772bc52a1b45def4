"""Tab 5: how the demo works, who holds what, and what it does not protect against."""

from __future__ import annotations

import gradio as gr

ABOUT = """
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

```
 CLIENTS (training)      FLOWER SERVER                 MODEL DEVELOPER
 own data ──weights──▶   averages weights ──model──▶   compile → client.zip   server.zip
 (never sent)            (never sees data)                           │            │
     ┌───────────────────────────────────────────────────────────────┘            │
     ▼                                                                            ▼
 CLIENT (inference)                                                           FHE SERVER (HTTP)
 client.zip + private key (never leaves)                                      server.zip (the circuit)
 evaluation keys ──────────────────────────────────────────────────────────▶  evaluation keys
 encrypt(x) ────────────────────────── ciphertext ─────────────────────────▶  runs the circuit on it
 decrypt(y) ◀────────────────────── encrypted result ───────────────────────  (cannot decrypt anything)
```

| | training data | model weights | private key | evaluation keys | input / prediction in clear |
|---|---|---|---|---|---|
| a training client | its own only | ✓ | — | — | — |
| Flower server | ✗ | ✓ | — | — | — |
| inference client | — | (client.zip: quantizers) | ✓ | ✓ | ✓ |
| FHE server | ✗ | ✓ (the circuit) | ✗ | ✓ | ✗ — ciphertexts only |

### Threat model of *this* web demo

In this web demo the **host plays the client role for you**: your browser session's private key lives in a
temporary directory on the machine running the app (owner-only permissions, deleted when you close the
tab or after an hour idle). So the host *could* see your keys, your inputs and the decrypted predictions.
The FHE server is a separate HTTP service that only ever receives `server.zip`, evaluation keys and
ciphertexts, and forgets this session's keys and circuit when the session ends.

For real privacy, run the client yourself so the keys never leave your machine:

```bash
python -m fhe_model client --server URL   # downloads client.zip, keeps the keys local,
                                           # sends only evaluation keys and ciphertexts
```

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
    gr.Markdown(ABOUT)
