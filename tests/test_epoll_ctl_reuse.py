"""epoll: a number whose file our own code closed is armed with one
EPOLL_CTL_ADD, not a MOD that fails with ENOENT first (decision 989).

The engine arms an fd that leaves idle with a MOD (ADD on ENOENT) while it
believes the fd registered: a file closed behind its back takes its
registration with it (review D3). A pidfd closed after its one-shot poll and
a pipe closed by its transport were such files: each spawn, and each pipe,
cost a failed MOD when the next file got the number. Their owners now say
so (``Engine.fd_closing``): the engine takes the fd out of its set and
forgets it. ``engine_stats()["ctl_failed"]`` counts epoll_ctl calls that
failed, a fallback's first try included.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sys

import pytest
from conftest import LOOP_KINDS, make_loop, run_in


def _failed(lp) -> int:
    return lp.engine_stats()["ctl_failed"]


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_spawns_arm_each_pidfd_without_a_failed_ctl(kind):
    lp = make_loop(kind)
    try:

        async def main():
            for _ in range(10):
                p = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
                assert await p.wait() == 0

        run_in(lp, main(), 60)
        assert _failed(lp) == 0  # epoll before 989: 9 (each pidfd but the first)
    finally:
        lp.close()


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_pipes_closed_by_their_transports_leave_no_failed_ctl(kind):
    lp = make_loop(kind)
    try:

        async def main():
            for _ in range(10):
                r, w = os.pipe()
                rt, _ = await lp.connect_read_pipe(asyncio.Protocol, os.fdopen(r, "rb", 0))
                wt, _ = await lp.connect_write_pipe(asyncio.Protocol, os.fdopen(w, "wb", 0))
                wt.close()
                rt.close()
                for _ in range(3):
                    await asyncio.sleep(0)

        run_in(lp, main())
        assert _failed(lp) == 0  # epoll before 989: 18 (two a pipe but the first)
    finally:
        lp.close()


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_fd_closing_refuses_while_an_op_is_live(kind):
    """While an op of the fd is live the engine's registration is still in
    use: nothing is done (-EBUSY); once it ended, 0."""
    lp = make_loop(kind)
    r, w = os.pipe()
    try:
        eng = lp._engine
        seen = []
        ud = eng.poll(r, 1, lambda res, more, data: seen.append(res))  # POLLIN
        run_in(lp, asyncio.sleep(0))
        assert eng.fd_closing(r) == -errno.EBUSY
        eng.cancel(ud)
        run_in(lp, asyncio.sleep(0))
        run_in(lp, asyncio.sleep(0))
        assert seen and eng.fd_closing(r) == 0
    finally:
        lp.close()
        os.close(r)
        os.close(w)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_a_closed_read_pipe_whose_file_lives_on_leaves_the_loop_asleep(kind):
    """A read pipe is registered level-triggered (decision 382). When its
    file outlives the number (a dup here; a child's copy alike), close(2)
    leaves the registration in the epoll set, where the number can no longer
    reach it: with the pipe readable, every wait returned at once (83,440
    waits in a 0.2 s sleep before 989). The transport's close takes it out
    first now (fd_closing: EPOLL_CTL_DEL)."""
    lp = make_loop(kind)
    r, w = os.pipe()
    r2 = os.dup(r)
    try:

        async def main():
            rt, _ = await lp.connect_read_pipe(asyncio.Protocol, os.fdopen(r, "rb", 0))
            await asyncio.sleep(0)
            rt.close()
            for _ in range(5):
                await asyncio.sleep(0)
            os.write(w, b"x")  # readable: a registration left behind fires
            before = lp.engine_stats()["enters"]
            await asyncio.sleep(0.05)
            return lp.engine_stats()["enters"] - before

        enters = run_in(lp, main())
        assert enters < 20, f"{enters} waits in one 0.05 s sleep: the loop spins"
    finally:
        lp.close()
        os.close(r2)
        os.close(w)
