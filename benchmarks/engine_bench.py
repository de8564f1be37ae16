#!/usr/bin/env python3
"""Engine-level benchmarks: io_uring against epoll, side by side, in one run.

Scenarios (each run on ``Engine(backend="io_uring")`` and ``Engine(backend="epoll")``):

``pingpong``
    ``--pairs`` socketpairs, both ends driven by one engine in one process. Every
    end has a multishot ``eng.recv``; each record's bytes are sent straight back
    with ``eng.send``. One 64-byte message bounces ``--bounces`` times per pair.
    Ops counted = records dispatched by ``eng.run`` (recv records + send records).
``nop``
    64 ``eng.nop()`` kept in flight (resubmitted from the callback) until ``--nops``
    have completed. Ops counted = records dispatched.

Reported per scenario and backend: median ops/s over ``--repeat`` repetitions, the
Python-side cost per completion (wall time of the timed loop minus the time spent
inside the C ``ul_run`` call, divided by records), kernel entries per op from the
engine's own stats, and with ``--strace`` the syscalls per op counted by
``strace -c -f`` on a child run of this script. One extra instrumented run per
scenario and backend splits the Python cost into engine dispatch and callback.
See benchmarks/README.md.

This is a report: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

MSG_LEN = 64
IN_FLIGHT = 64
BACKENDS = ("io_uring", "epoll")
SCENARIOS = ("pingpong", "nop")
STALL_S = 60.0  # a timed loop that makes no progress for this long is an engine bug
STRACE = shutil.which("strace") or "/usr/bin/strace"
# syscalls shown one by one in the strace breakdown (the total counts every syscall)
KEY_SYSCALLS = (
    "io_uring_enter",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_ctl",
    "recvfrom",
    "sendto",
    "recvmsg",
    "sendmsg",
    "read",
    "write",
    "readv",
    "writev",
)

engine = None  # uringloop.engine, imported by _import_engine()


class BenchError(Exception):
    """The engine misbehaved during a scenario (a bug to report, not a slow result)."""


def _import_engine():
    global engine
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    try:
        from uringloop import engine as mod
    except ImportError as exc:
        sys.exit(
            f"cannot import uringloop.engine ({exc}); build it first:\n"
            "    python setup.py build_ext --inplace"
        )
    engine = mod
    return mod


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Time spent inside the C ul_run call
# --------------------------------------------------------------------------------------


class RunClock:
    """Accumulates wall time spent inside the C ``ul_run`` call.

    The engine module holds the cffi ``lib``; we swap it (once, process-wide) for a
    plain object carrying the same attributes, where ``ul_run`` is a thin wrapper that
    brackets the real C call with ``perf_counter_ns``. Attribute lookups on the stand-in
    cost what they cost on ``lib``. The wrapper's own Python frame falls outside the
    bracket and so is charged to Python: once per ``run()``, not per completion.
    """

    def __init__(self) -> None:
        self.ns = 0
        self.calls = 0
        self.hooked = False
        self._orig = None
        self._timed = None

    def install(self, mod) -> None:
        lib = None
        for val in list(vars(mod).values()):
            if not isinstance(val, type) and hasattr(val, "ul_run") and hasattr(val, "ul_new"):
                lib = val
                break
        if lib is None:
            return
        orig = lib.ul_run
        clock = time.perf_counter_ns
        acc = self

        def ul_run(e, timeout_ns, _orig=orig, _clock=clock, _acc=acc):
            t0 = _clock()
            n = _orig(e, timeout_ns)
            _acc.ns += _clock() - t0
            _acc.calls += 1
            return n

        class _Lib:
            pass

        proxy = _Lib()
        for name in dir(lib):
            if name.startswith("__"):
                continue
            try:
                setattr(proxy, name, getattr(lib, name))
            except Exception:  # noqa: BLE001 - a non-readable attribute is not needed
                pass
        proxy.ul_run = ul_run
        for name, val in list(vars(mod).items()):
            if val is lib:
                setattr(mod, name, proxy)
            elif val is orig:
                setattr(mod, name, ul_run)
        self._orig, self._timed, self._lib, self._proxy = orig, ul_run, lib, proxy
        self.hooked = True

    def adopt(self, eng) -> None:
        """Re-point references an Engine instance keeps to the C function or lib."""
        if not self.hooked:
            return
        names = list(getattr(eng, "__dict__", {}).keys())
        for cls in type(eng).__mro__:
            names += list(getattr(cls, "__slots__", ()))
        for name in names:
            try:
                val = getattr(eng, name)
            except AttributeError:
                continue
            try:
                if val is self._orig:
                    setattr(eng, name, self._timed)
                elif val is self._lib:
                    setattr(eng, name, self._proxy)
            except (AttributeError, TypeError):
                pass


CLOCK = RunClock()


# --------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------


def _stat(st: dict, *names: str) -> int:
    for n in names:
        if n in st:
            return int(st[n])
    return 0


def _snapshot(eng) -> dict:
    st = eng.stats()
    return {
        "enters": _stat(st, "enters"),
        "submitted": _stat(st, "submitted"),
        "records": _stat(st, "records", "completions"),
    }


def _drive(eng, left: list, what: str, errors: list) -> int:
    """Run the engine until left[0] reaches 0; returns records dispatched."""
    run = eng.run
    monotonic = time.monotonic
    dispatched = 0
    last_progress = monotonic()
    while left[0] > 0:
        n = run(1.0)
        if n:
            dispatched += n
            last_progress = monotonic()
        elif monotonic() - last_progress > STALL_S:
            raise BenchError(
                f"{what}: no record for {STALL_S:.0f} s with {left[0]} outstanding "
                f"(in_flight={eng.in_flight}, stats={eng.stats()})"
            )
        if errors:
            raise BenchError(f"{what}: {errors[:5]}")
    return dispatched


def _teardown(eng, fds: list[int], what: str) -> None:
    results: list[int] = []
    for fd in fds:
        eng.close_fd(fd, lambda res, more, data: results.append(res))
    deadline = time.monotonic() + 10.0
    while eng.in_flight and time.monotonic() < deadline:
        eng.run(0.2)
    if eng.in_flight:
        raise BenchError(f"{what}: {eng.in_flight} ops still in flight 10 s after close_fd")
    bad = [r for r in results if r != 0]
    if bad or len(results) != len(fds):
        raise BenchError(f"{what}: close_fd results {len(results)}/{len(fds)}, non-zero: {bad[:5]}")


def _measure(eng, start, left: list, what: str, errors: list) -> dict:
    before = _snapshot(eng)
    c0, k0 = CLOCK.ns, CLOCK.calls
    t0 = time.perf_counter_ns()
    start()
    dispatched = _drive(eng, left, what, errors)
    wall = time.perf_counter_ns() - t0
    c_ns, runs = CLOCK.ns - c0, CLOCK.calls - k0
    after = _snapshot(eng)
    return {
        "ops": dispatched,
        "wall_ns": wall,
        "c_ns": c_ns if runs else None,
        "runs": runs,
        "enters": after["enters"] - before["enters"],
        "submitted": after["submitted"] - before["submitted"],
        "records": after["records"] - before["records"],
    }


def scenario_pingpong(eng, pairs: int, bounces: int, acc: list | None = None) -> dict:
    """acc: when a list, the time spent inside the callbacks is added to acc[0]."""
    what = f"pingpong[{eng.backend}]"
    target = bounces * MSG_LEN  # bytes received by the two ends of one pair, in total
    msg = bytes(range(MSG_LEN))
    send = eng.send
    left = [pairs]
    errors: list = []
    closing = [False]
    fds: list[int] = []
    firsts: list[int] = []

    def on_send(res, more, data):
        if res < 0:
            errors.append(("send", res, os.strerror(-res)))

    def make_recv(fd: int, got: list):
        def on_recv(res, more, data):
            if res > 0:
                before = got[0]
                got[0] = before + res
                if got[0] < target:
                    send(fd, data, on_send)
                elif before < target:
                    left[0] -= 1
            elif not closing[0]:
                errors.append(("recv", fd, res, more))

        return on_recv

    if acc is not None:  # the same bodies, bracketed by two clock reads (inlined)
        clock = time.perf_counter_ns

        def on_send(res, more, data):  # noqa: F811
            t0 = clock()
            if res < 0:
                errors.append(("send", res, os.strerror(-res)))
            acc[0] += clock() - t0

        def make_recv(fd: int, got: list):  # noqa: F811
            def on_recv(res, more, data):
                t0 = clock()
                if res > 0:
                    before = got[0]
                    got[0] = before + res
                    if got[0] < target:
                        send(fd, data, on_send)
                    elif before < target:
                        left[0] -= 1
                elif not closing[0]:
                    errors.append(("recv", fd, res, more))
                acc[0] += clock() - t0

            return on_recv

    for _ in range(pairs):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        fa, fb = a.detach(), b.detach()
        got = [0]
        eng.recv(fa, make_recv(fa, got), multishot=True)
        eng.recv(fb, make_recv(fb, got), multishot=True)
        fds += (fa, fb)
        firsts.append(fa)
    n = eng.run(0)  # arm the receives outside the timed region
    if n or errors:
        raise BenchError(f"{what}: {n} records before any data was sent: {errors[:5]}")

    def start():
        for fd in firsts:
            send(fd, msg, on_send)

    try:
        result = _measure(eng, start, left, what, errors)
    finally:
        closing[0] = True
    _teardown(eng, fds, what)
    result["units"] = pairs * bounces
    return result


def scenario_nop(eng, count: int, acc: list | None = None) -> dict:
    what = f"nop[{eng.backend}]"
    nop = eng.nop
    issued = [0]
    left = [count]
    errors: list = []

    def on_nop(res, more, data):
        left[0] -= 1
        if res != 0:
            errors.append(("nop", res))
        if issued[0] < count:
            issued[0] += 1
            nop(on_nop)

    if acc is not None:
        clock = time.perf_counter_ns

        def on_nop(res, more, data):  # noqa: F811
            t0 = clock()
            left[0] -= 1
            if res != 0:
                errors.append(("nop", res))
            if issued[0] < count:
                issued[0] += 1
                nop(on_nop)
            acc[0] += clock() - t0

    def start():
        for _ in range(min(IN_FLIGHT, count)):
            issued[0] += 1
            nop(on_nop)

    result = _measure(eng, start, left, what, errors)
    if eng.in_flight:
        raise BenchError(f"{what}: in_flight={eng.in_flight} after all nops completed")
    result["units"] = count
    return result


def run_once(scenario: str, backend: str, args, acc: list | None = None) -> dict:
    eng = engine.Engine(backend=backend)
    CLOCK.adopt(eng)
    try:
        if scenario == "pingpong":
            r = scenario_pingpong(eng, args.pairs, args.bounces, acc)
        elif scenario == "nop":
            r = scenario_nop(eng, args.nops, acc)
        elif scenario == "null":  # baseline for strace: engine made and freed, no op
            return {"ops": 0}
        else:
            raise ValueError(scenario)
        if acc is not None:
            r["cb_ns"] = acc[0]
        return r
    finally:
        eng.close()


# --------------------------------------------------------------------------------------
# strace
# --------------------------------------------------------------------------------------


def parse_strace_summary(text: str) -> dict[str, int]:
    """Syscall name -> calls, from ``strace -c`` output (with or without ``-U``)."""
    calls: dict[str, int] = {}
    header = None
    for line in text.splitlines():
        cols = line.split()
        if not cols or set(line.strip()) <= {"-", " "}:
            continue
        if cols[-1] == "syscall" or cols[0] == "syscall":
            header = cols
            continue
        name = cols[-1] if header and header[-1] == "syscall" else cols[0]
        if name == "total":
            continue
        nums = [c for c in cols if c != name]
        if header and header[0] == "syscall":  # -U name,calls
            value = nums[0] if nums else "0"
        elif header and "calls" in header:
            # "% time seconds usecs/call calls errors syscall": calls is the 4th column;
            # errors may be blank, which only shortens the tail.
            value = nums[header.index("calls") - 1] if len(nums) >= 4 else nums[-1]
        else:
            continue
        try:
            calls[name] = calls.get(name, 0) + int(value)
        except ValueError:
            continue
    return calls


def _child_cmd(scenario: str, backend: str, args) -> list[str]:
    me = [sys.executable, os.path.abspath(__file__), "--child", scenario, backend]
    return me + [f"--pairs={args.pairs}", f"--bounces={args.bounces}", f"--nops={args.nops}"]


def strace_run(scenario: str, backend: str, args) -> tuple[dict[str, int], int]:
    with tempfile.TemporaryDirectory(prefix="ul-strace-") as tmp:
        out = os.path.join(tmp, "summary.txt")
        base = [STRACE, "-f", "-c", "-o", out]
        cmd = base[:3] + ["-U", "name,calls"] + base[3:] + _child_cmd(scenario, backend, args)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0 and "-U" in proc.stderr:  # strace older than 5.18
            cmd = base + _child_cmd(scenario, backend, args)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise BenchError(
                f"strace child {scenario}/{backend} exited {proc.returncode}: "
                f"{proc.stderr.strip()[-800:]}"
            )
        lines = proc.stdout.strip().splitlines()
        ops = int(lines[-1]) if lines else 0
        with open(out) as f:
            return parse_strace_summary(f.read()), ops


def strace_per_op(scenario: str, backend: str, args, baselines: dict) -> dict | None:
    """Syscalls per op, with the child's startup (a ``null`` child) subtracted."""
    if backend not in baselines:
        baselines[backend] = strace_run("null", backend, args)[0]
    calls, ops = strace_run(scenario, backend, args)
    if ops <= 0:
        return None
    base = baselines[backend]
    net = {k: max(0, v - base.get(k, 0)) for k, v in calls.items()}
    per = {k: v / ops for k, v in net.items() if v}
    per["total"] = sum(net.values()) / ops
    return per


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f} M"
    if x >= 1e3:
        return f"{x / 1e3:.1f} k"
    return f"{x:.0f}"


def _fmt(x, spec: str = ".3f", none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def clock_cost_ns() -> float:
    """Cost of one ``time.perf_counter_ns()`` call (best of a few batches)."""
    clock = time.perf_counter_ns
    best = float("inf")
    for _ in range(5):
        t0 = clock()
        for _ in range(20_000):
            clock()
        best = min(best, (clock() - t0) / 20_000)
    return best


def split_cost(r: dict, clock_ns: float) -> dict | None:
    """From an instrumented run: engine dispatch and callback µs per completion.

    Of the two clock reads bracketing each callback, about one lands outside the
    bracket and would be charged to dispatch: it is taken back out (clock_ns).
    """
    if r.get("c_ns") is None or "cb_ns" not in r or not r["ops"]:
        return None
    ops = r["ops"]
    dispatch = (r["wall_ns"] - r["c_ns"] - r["cb_ns"]) / ops - clock_ns
    return {"dispatch_us": max(0.0, dispatch) / 1e3, "callback_us": r["cb_ns"] / ops / 1e3}


def summarize(runs: list[dict]) -> dict:
    rates = [r["ops"] / (r["wall_ns"] / 1e9) for r in runs]
    py = [(r["wall_ns"] - r["c_ns"]) / r["ops"] / 1e3 for r in runs if r["c_ns"] is not None]
    enters = [r["enters"] / r["ops"] for r in runs]
    subm = [r["submitted"] / r["ops"] for r in runs]
    per_run = [r["ops"] / r["runs"] for r in runs if r["runs"]]
    return {
        "rate": statistics.median(rates),
        "rate_min": min(rates),
        "rate_max": max(rates),
        "py_us": statistics.median(py) if py else None,
        "enters": statistics.median(enters),
        "submitted": statistics.median(subm),
        "per_run": statistics.median(per_run) if per_run else None,
        "ops": runs[0]["ops"],
        "records_ok": all(r["records"] in (0, r["ops"]) for r in runs),
        "split": None,
    }


def print_report(args, info: dict, results: dict, straces: dict, notes: list[str]) -> None:
    out = []
    out.append("## uringloop engine benchmark\n")
    out.append(
        f"kernel {platform.release()} | Python {platform.python_version()} "
        f"({platform.python_implementation()}) | {os.cpu_count()} CPUs | "
        f"command: `{shlex.join(getattr(sys, 'orig_argv', [sys.executable, *sys.argv]))}`"
    )
    flags = ", ".join(info.get("ring_flags", [])) or "-"
    out.append(
        f"\ndefault backend: {info.get('backend')} "
        f"{'(' + info['reason'] + ')' if info.get('reason') else ''}| ring flags: {flags} | "
        f"multishot recv/accept: {info.get('multishot_recv')}/{info.get('multishot_accept')} "
        f"| buffer ring: {info.get('buffer_ring')}"
    )
    out.append(
        f"\npingpong: {args.pairs} socketpairs x {args.bounces} bounces of {MSG_LEN} B; "
        f"nop: {args.nops} nops, {IN_FLIGHT} in flight; median of {args.repeat} repetitions\n"
    )
    head = (
        "| scenario | backend | ops/s (median) | ratio io_uring/epoll | Python µs/completion "
        "| enters/op (engine stats) | syscalls/op (strace) |"
    )
    out.append(head)
    out.append("|---|---|---:|---:|---:|---:|---:|")
    for scen in args.scenarios:
        epoll = results.get((scen, "epoll"))
        for be in args.backends:
            s = results.get((scen, be))
            if isinstance(s, str):
                out.append(f"| {scen} | {be} | {s} | | | | |")
                continue
            if s is None:
                continue
            ratio = "—"
            if be == "io_uring" and isinstance(epoll, dict):
                ratio = f"{s['rate'] / epoll['rate']:.2f}x"
            st = straces.get((scen, be))
            if isinstance(st, dict):
                sc = f"{st['total']:.3f}"
            elif isinstance(st, str):
                sc = st
            else:
                sc = "—" if not args.strace else "n/a"
            out.append(
                f"| {scen} | {be} | {_fmt_rate(s['rate'])} | {ratio} | {_fmt(s['py_us'], '.2f')} "
                f"| {s['enters']:.3f} | {sc} |"
            )

    out.append("\n### details\n")
    out.append(
        "| scenario | backend | ops/run | ops/s min–max | records/run() | "
        "submitted/op (engine stats) | engine dispatch µs/completion "
        "| callback µs/completion |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for scen in args.scenarios:
        for be in args.backends:
            s = results.get((scen, be))
            if not isinstance(s, dict):
                continue
            sp = s["split"] or {}
            out.append(
                f"| {scen} | {be} | {s['ops']} | {_fmt_rate(s['rate_min'])}–"
                f"{_fmt_rate(s['rate_max'])} | {_fmt(s['per_run'], '.1f')} "
                f"| {s['submitted']:.3f} | {_fmt(sp.get('dispatch_us'), '.2f')} "
                f"| {_fmt(sp.get('callback_us'), '.2f')} |"
            )

    if args.strace and any(isinstance(v, dict) for v in straces.values()):
        out.append("\n### strace: syscalls per completed op (child startup subtracted)\n")
        out.append("| scenario | backend | total | " + " | ".join(KEY_SYSCALLS) + " |")
        out.append("|---|---|---:|" + "---:|" * len(KEY_SYSCALLS))
        for (scen, be), st in straces.items():
            if not isinstance(st, dict):
                continue
            cells = [_fmt(st.get(k), ".3f", "0") for k in KEY_SYSCALLS]
            out.append(f"| {scen} | {be} | {st['total']:.3f} | " + " | ".join(cells) + " |")

    out.append("\n### goals\n")
    for scen in args.scenarios:
        s = results.get((scen, "io_uring"))
        if isinstance(s, dict):
            e = s["enters"]
            st = straces.get((scen, "io_uring"))
            extra = ""
            if isinstance(st, dict):
                extra = f"; strace io_uring_enter/op {st.get('io_uring_enter', 0.0):.3f}"
            verdict = "met" if e <= 0.1 else "NOT met"
            depth = args.pairs if scen == "pingpong" else min(IN_FLIGHT, args.nops)
            out.append(
                f"- {scen}, io_uring: {e:.3f} kernel entries per op with {depth} in flight "
                f"(goal <= 0.1: {verdict}){extra}"
            )
        for be in args.backends:
            s = results.get((scen, be))
            if isinstance(s, dict) and s["py_us"] is not None:
                verdict = "met" if s["py_us"] <= 1.0 else "NOT met"
                line = (
                    f"- {scen}, {be}: {s['py_us']:.2f} µs of Python per completion, "
                    f"resubmission included (goal <= 1 µs: {verdict})"
                )
                if s["split"]:
                    d = s["split"]["dispatch_us"]
                    line += (
                        f"; engine dispatch alone {d:.2f} µs ({'met' if d <= 1.0 else 'NOT met'})"
                    )
                out.append(line)
    for n in notes:
        out.append(f"- note: {n}")
    print("\n".join(out))


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=64, help="socketpairs in pingpong (64)")
    p.add_argument("--bounces", type=int, default=1000, help="bounces per pair (1000)")
    p.add_argument("--nops", type=int, default=200_000, help="nops per repetition (200000)")
    p.add_argument("--repeat", type=int, default=5, help="repetitions; median reported (5)")
    p.add_argument("--quick", action="store_true", help="small counts, for smoke tests")
    p.add_argument("--strace", action="store_true", help="add syscalls/op from strace -c -f")
    p.add_argument(
        "--scenario",
        dest="scenarios",
        action="append",
        choices=SCENARIOS,
        help="run only this scenario (repeatable)",
    )
    p.add_argument(
        "--backend",
        dest="backends",
        action="append",
        choices=BACKENDS,
        help="run only this backend (repeatable)",
    )
    p.add_argument(
        "--child",
        nargs=2,
        metavar=("SCENARIO", "BACKEND"),
        help=argparse.SUPPRESS,  # one run, completed ops on the last stdout line
    )
    args = p.parse_args(argv)
    if args.quick:
        args.pairs = min(args.pairs, 8)
        args.bounces = min(args.bounces, 50)
        args.nops = min(args.nops, 5_000)
        args.repeat = min(args.repeat, 2)
    args.scenarios = args.scenarios or list(SCENARIOS)
    args.backends = args.backends or list(BACKENDS)
    for name in ("pairs", "bounces", "nops", "repeat"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


def child_main(args) -> int:
    scenario, backend = args.child
    if scenario not in SCENARIOS + ("null",) or backend not in BACKENDS:
        print(f"bad --child {scenario} {backend}", file=sys.stderr)
        return 2
    _import_engine()
    try:
        r = run_once(scenario, backend, args)
    except BenchError as exc:
        print(f"engine problem: {exc}", file=sys.stderr)
        return 1
    print(r["ops"])
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    mod = _import_engine()
    CLOCK.install(mod)
    notes: list[str] = []
    if not CLOCK.hooked:
        notes.append("could not find ul_run in uringloop.engine: Python µs/completion is n/a")
    info = mod.backend_info()

    backends = []
    results: dict = {}
    for be in args.backends:
        try:
            mod.Engine(backend=be).close()
            backends.append(be)
        except OSError as exc:
            for scen in args.scenarios:
                results[(scen, be)] = f"unavailable: {exc}"
    runs: dict = {(s, b): [] for s in args.scenarios for b in backends}
    failed: dict = {}
    t_start = time.monotonic()
    for scen in args.scenarios:
        # warm-up: one small unmeasured run per backend (imports, allocator, caches)
        for be in backends:
            small = argparse.Namespace(
                pairs=args.pairs, bounces=max(1, args.bounces // 10), nops=max(1, args.nops // 10)
            )
            try:
                run_once(scen, be, small)
            except BenchError as exc:
                failed[(scen, be)] = str(exc)
        for rep in range(args.repeat):
            for be in backends:  # interleaved so drift hits both backends alike
                if (scen, be) in failed:
                    continue
                _log(f"{scen} {be} repetition {rep + 1}/{args.repeat}")
                try:
                    runs[(scen, be)].append(run_once(scen, be, args))
                except BenchError as exc:
                    failed[(scen, be)] = str(exc)
    # one more, instrumented, run each: time inside the callbacks (not used for ops/s)
    clock_ns = clock_cost_ns()
    splits: dict = {}
    if CLOCK.hooked:
        for scen in args.scenarios:
            for be in backends:
                if (scen, be) in failed:
                    continue
                _log(f"{scen} {be} instrumented run (callback time)")
                try:
                    splits[(scen, be)] = split_cost(run_once(scen, be, args, [0]), clock_ns)
                except BenchError as exc:
                    failed[(scen, be)] = str(exc)
    for key, rs in runs.items():
        if key in failed:
            results[key] = "ENGINE PROBLEM (see notes)"
            notes.append(f"{key[0]}/{key[1]}: {failed[key]}")
        elif rs:
            results[key] = summarize(rs)
            results[key]["split"] = splits.get(key)
            if not results[key]["records_ok"]:
                notes.append(
                    f"{key[0]}/{key[1]}: stats()['records'] differs from records dispatched"
                )
    if CLOCK.hooked and CLOCK.calls == 0 and runs:
        notes.append("the ul_run wrapper saw no call: Python µs/completion is n/a")

    straces: dict = {}
    if args.strace:
        if not os.path.exists(STRACE) and not shutil.which("strace"):
            notes.append("strace not found: install it with `apt-get install strace`")
            args.strace = False
        else:
            baselines: dict = {}
            for scen in args.scenarios:
                for be in backends:
                    _log(f"strace {scen} {be}")
                    try:
                        straces[(scen, be)] = strace_per_op(scen, be, args, baselines)
                    except (BenchError, subprocess.SubprocessError, OSError, ValueError) as exc:
                        straces[(scen, be)] = "failed"
                        notes.append(f"strace {scen}/{be}: {exc}")
    _log(f"done in {time.monotonic() - t_start:.1f} s")
    print_report(args, info, results, straces, notes)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
