"""Time from a cold ``python app.py`` to the first decrypted prediction, and the app's memory.

Starts the app in a subprocess on a free port, then drives it through its API
with ``gradio_client``: train (mnist-5k, 5 clients × 3 rounds), compile,
keygen, encrypt, run on the FHE server, decrypt. Prints the seconds of each
step and in total (goal: <= 15 s on 2 cores), checks that the decrypted
prediction equals the clear model's, and prints the resident memory of the
app and its children when idle, warm training runtime included (goal: <= 1.5 GB).

Usage::

    python benchmarks/first_prediction.py [--dataset mnist-5k] [--clients 5] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
GOAL_SECONDS = 15.0
GOAL_RSS_BYTES = 1.5 * 1024**3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tree_rss(process: psutil.Process) -> int:
    """Resident memory of a process and all its descendants, in bytes."""
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def wait_until_up(url: str, app: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if app.poll() is not None:
            raise RuntimeError(f"app.py exited with code {app.returncode} before serving")
        try:
            if httpx.get(url + "gradio_api/info", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"app.py did not serve {url} within {timeout:g} s")


def settle_rss(process: psutil.Process, seconds: float = 3.0) -> int:
    """RSS after letting the app idle a moment (children that exit are gone)."""
    time.sleep(seconds)
    return tree_rss(process)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist-5k")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sample", type=int, default=0, help="test sample to encrypt")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--app-log", help="write the app's output to this file")
    args = parser.parse_args()

    from visitors import visitor

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("FHE_SERVER_URL", None)
    steps: dict[str, float] = {}
    start = time.perf_counter()
    log = open(args.app_log, "wb") if args.app_log else subprocess.DEVNULL  # noqa: SIM115
    app = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        wait_until_up(url, app)
        steps["startup"] = time.perf_counter() - start
        print(f"  app up after {steps['startup']:.1f} s", file=sys.stderr, flush=True)
        process = psutil.Process(app.pid)
        idle_rss_start = settle_rss(process, 1.0)

        client = visitor(url)
        t = time.perf_counter()
        trained = client.predict(
            dataset=args.dataset, num_clients=args.clients, num_rounds=args.rounds, api_name="/train"
        )[0]
        steps["train"] = time.perf_counter() - t
        print(f"  train done after {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        results: dict[str, dict] = {}
        for name, kwargs in [
            ("compile", {}), ("keygen", {}), ("encrypt", {"sample_index": args.sample}),
            ("run_fhe", {}), ("decrypt", {}),
        ]:
            t = time.perf_counter()
            results[name] = client.predict(api_name=f"/{name}", **kwargs)[0]
            steps[name] = time.perf_counter() - t
            print(f"  {name} done after {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        total = time.perf_counter() - start
        idle_rss_after = settle_rss(process)
        peak_children = len(process.children(recursive=True))
    finally:
        app.terminate()
        try:
            app.wait(20)
        except subprocess.TimeoutExpired:
            app.kill()

    decrypted = results["decrypt"]
    report = {
        "seconds_to_first_prediction": round(total, 2),
        "goal_seconds": GOAL_SECONDS,
        "steps_seconds": {k: round(v, 2) for k, v in steps.items()},
        "federated_accuracy": trained["accuracy"],
        "accuracy_fhe_simulated": results["compile"]["accuracy_fhe_simulated"],
        "prediction": decrypted["prediction"],
        "clear_prediction": decrypted["clear_prediction"],
        "label": decrypted["label"],
        "decrypted_equals_clear": decrypted["prediction"] == decrypted["clear_prediction"],
        "idle_rss_mb_at_start": round(idle_rss_start / 1024**2, 1),
        "idle_rss_mb_after_flow": round(idle_rss_after / 1024**2, 1),
        "child_processes_after_flow": peak_children,
        "goal_rss_mb": round(GOAL_RSS_BYTES / 1024**2),
    }
    if args.json:
        print(json.dumps(report))
    else:
        print(f"First decrypted prediction {total:.1f} s after a cold `python app.py` "
              f"(goal <= {GOAL_SECONDS:g} s)")
        for name, seconds in steps.items():
            print(f"  {name:<8} {seconds:6.2f} s")
        print(f"Decrypted {decrypted['prediction']} / clear {decrypted['clear_prediction']} / "
              f"label {decrypted['label']}: {'equal' if report['decrypted_equals_clear'] else 'DIFFERENT'}")
        print(f"Federated accuracy {trained['accuracy']:.2%}, FHE-simulated "
              f"{results['compile']['accuracy_fhe_simulated']:.2%}")
        print(f"Idle RSS (app + children): {report['idle_rss_mb_at_start']:.0f} MB at start, "
              f"{report['idle_rss_mb_after_flow']:.0f} MB after the flow "
              f"(goal <= {report['goal_rss_mb']} MB)")
    ok = report["decrypted_equals_clear"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
