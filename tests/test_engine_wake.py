"""wake() from other threads is never lost, whatever the timing.

Ping-pong between a waker thread and the engine's thread: the waker posts one
item and wakes the engine, then waits until that item was seen before posting
the next. Random pauses on both sides make the wake land sometimes while the
engine sleeps and sometimes while it is awake between runs (the case where a
wake must make the next blocking run return at once). A lost wakeup leaves the
engine asleep until its 5 s timeout: the waker's 2 s wait for the ack catches it.
"""

import random
import threading
import time


def test_no_lost_wakeup_ping_pong(eng):
    rounds = 1000
    posted: list[int] = []
    acked = threading.Event()
    failures: list[str] = []
    stop = threading.Event()

    def waker():
        rng = random.Random(11)
        for i in range(rounds):
            time.sleep(rng.random() * 0.0004)
            acked.clear()
            posted.append(i)
            eng.wake()
            if not acked.wait(2.0):
                failures.append(f"wake {i} was not noticed within 2 s")
                break
        stop.set()

    thread = threading.Thread(target=waker, daemon=True)
    thread.start()
    rng = random.Random(5)
    seen = 0
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        eng.run(5.0)
        if len(posted) > seen:
            seen = len(posted)
            spin = time.monotonic() + rng.random() * 0.0004
            while time.monotonic() < spin:  # stay awake a little: wakes land here too
                pass
            acked.set()
    thread.join(timeout=10)
    assert not failures, failures[0]
    assert seen == rounds
