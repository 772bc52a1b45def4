"""SingleFlight: one computation per key, however many callers ask at once."""

from __future__ import annotations

import threading
import time

from concurrency.single_flight import SingleFlight


def test_callers_who_arrive_together_share_one_computation():
    flights, cache, computed = SingleFlight(), {}, []
    start = threading.Barrier(8)

    def get(key: str) -> str:
        start.wait()
        with flights.turn(key):
            if key not in cache:
                time.sleep(0.05)  # long enough that every other caller arrives meanwhile
                computed.append(key)
                cache[key] = key.upper()
            return cache[key]

    results = []
    threads = [threading.Thread(target=lambda: results.append(get("a"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert computed == ["a"]
    assert results == ["A"] * 8
    assert len(flights) == 0  # no lock is left behind once nobody holds or waits


def test_different_keys_do_not_wait_for_each_other():
    flights = SingleFlight()
    inside = threading.Event()
    release = threading.Event()

    def slow() -> None:
        with flights.turn("slow"):
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=slow)
    thread.start()
    assert inside.wait(5)
    with flights.turn("fast"):  # would block forever if keys shared a lock
        pass
    release.set()
    thread.join()


def test_a_failed_computation_lets_the_next_caller_try_again():
    flights, cache = SingleFlight(), {}
    for attempt in range(2):
        try:
            with flights.turn("k"):
                if attempt == 0:
                    raise RuntimeError("first try fails")
                cache["k"] = 1
        except RuntimeError:
            pass
    assert cache == {"k": 1}
    assert len(flights) == 0
