"""Who holds what at this point of the story, and what has crossed the wire.

One story, told everywhere: in this web demo the **client role runs on the
app's host, for the visitor**. The host generates the visitor's private key,
keeps it in a per-session directory (owner-only, never served, deleted when
the tab closes), encrypts and decrypts. The **FHE server** is a separate
service that only ever receives the circuit (``server.zip``), evaluation keys
and ciphertexts. The visitor's **browser** shows the results and keeps only an
opaque session id.
"""

from __future__ import annotations

from dataclasses import dataclass

from story.base import SessionCore

#: Who plays each role in this web demo.
CLIENT_ROLE = "Client: the app's host, acting for you"
SERVER_ROLE = "FHE server: a separate service"
BROWSER_ROLE = "Your browser: shows the results, keeps only an opaque session id"
#: What never leaves the client.
NEVER_SENT = ("the private key", "your input in clear", "the decrypted prediction")


@dataclass(frozen=True)
class Item:
    """One thing a role holds (or will hold once ``step`` has run).

    Attributes
    ----------
    name : str
        e.g. ``"private key"``.
    step : str
        The step that brings it: ``"compile"``, ``"①"`` … ``"④"``.
    held : bool
        Held now.
    size_bytes : int or None
        Its size, when it has one.
    note : str
        e.g. ``"test sample #3"``, ``"class 7"``.
    """

    name: str
    step: str
    held: bool
    size_bytes: int | None = None
    note: str = ""


@dataclass(frozen=True)
class Transfer:
    """One message between the client and the server (``to_server`` False: the answer)."""

    name: str
    step: str
    to_server: bool
    done: bool
    size_bytes: int | None = None


@dataclass(frozen=True)
class Holdings:
    """The client's and the server's holdings, and the messages so far, in the order of the story."""

    client: tuple[Item, ...]
    server: tuple[Item, ...]
    wire: tuple[Transfer, ...]


def holdings(session: SessionCore) -> Holdings:
    """What each role holds in ``session`` right now.

    Parameters
    ----------
    session : SessionCore
        A visitor's session.

    Returns
    -------
    Holdings
        Every item of the story, ``held`` (or ``done``) for those its steps have produced.
    """
    deployment, keys = session.deployment, session.keys
    encrypted, output, decrypted = session.encrypted, session.server_output, session.decrypted
    private_key = keys.keygen.private_key_bytes if keys else None
    evaluation_keys = keys.keygen.evaluation_key_bytes if keys else None
    ciphertext = encrypted.encryption.ciphertext_bytes if encrypted else None
    result = len(output.ciphertext) if output else None
    if encrypted is None:
        what = ""
    elif encrypted.source == "drawing":
        what = "your drawing"
    else:
        what = f"test sample #{encrypted.sample_index}"
    prediction = f"class {decrypted.result.class_name}" if decrypted else ""
    client = (
        Item("client.zip (quantizers, crypto parameters)", "compile", deployment is not None,
             deployment.files.client_zip_bytes if deployment else None),
        Item("private key", "①", keys is not None, private_key),
        Item("evaluation keys (made with the private key)", "①", keys is not None, evaluation_keys),
        Item("your input, in clear", "②", encrypted is not None, note=what),
        Item("the encrypted input", "②", encrypted is not None, ciphertext),
        Item("the encrypted result", "③", output is not None, result),
        Item("the prediction, decrypted", "④", decrypted is not None, note=prediction),
    )
    server = (
        Item("server.zip (the circuit, quantized weights)", "①", keys is not None,
             deployment.files.server_zip_bytes if deployment else None),
        Item("evaluation keys", "①", keys is not None, evaluation_keys),
        Item("the encrypted input", "③", output is not None, ciphertext),
        Item("the encrypted result it computed", "③", output is not None, result),
    )
    wire = (
        Transfer("evaluation keys", "①", True, keys is not None, evaluation_keys),
        Transfer("encrypted input", "③", True, output is not None, ciphertext),
        Transfer("encrypted result", "③", False, output is not None, result),
    )
    return Holdings(client, server, wire)
