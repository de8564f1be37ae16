"""wake() from other threads is never lost, whatever the timing.

Ping-pong between a waker thread and the engine's thread: the waker posts one
item and wakes the engine, then waits until that item was seen before posting
the next. Random pauses on both sides make the wake land sometimes while the
engine sleeps and sometimes while it is awake between runs (the case where a
wake must make the next blocking run return at once). The engine runs with no
timeout (run(None)), so it returns only for a wake or a signal: a lost wakeup
is a hang, which pytest-timeout reports (its SIGALRM ends the wait with EINTR).
No speed is assumed anywhere.
"""

import random
import threading
import time


def test_no_lost_wakeup_ping_pong(eng):
    rounds = 1000
    posted: list[int] = []
    acked = threading.Event()
    stop = threading.Event()

    def waker():
        rng = random.Random(11)
        for i in range(rounds):
            time.sleep(rng.random() * 0.0004)
            acked.clear()
            posted.append(i)
            eng.wake()
            acked.wait()  # a lost wakeup never returns: pytest-timeout fails the test
        stop.set()
        eng.wake()  # the engine may be asleep again after the last ack

    thread = threading.Thread(target=waker, daemon=True)
    thread.start()
    rng = random.Random(5)
    seen = 0
    while not stop.is_set():
        eng.run(None)  # returns on a wake (or EINTR), never by itself
        if len(posted) > seen:
            seen = len(posted)
            spin = time.monotonic() + rng.random() * 0.0004
            while time.monotonic() < spin:  # stay awake a little: wakes land here too
                pass
            acked.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert seen == rounds
