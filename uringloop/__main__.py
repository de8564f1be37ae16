"""``python -m uringloop``: which backend runs here, and why."""

import sys

from . import engine


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def main() -> int:
    try:
        info = engine.backend_info()
    except ValueError as exc:  # a bad URINGLOOP_BACKEND value
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if info["backend"] == "none":
        print(f"error: {info['reason']}", file=sys.stderr)
        return 1
    reason = info["reason"] or "io_uring available (auto)"
    print(f"backend: {info['backend']}")
    print(f"reason: {reason}")
    print(f"kernel: {info['kernel']}")
    if not info["io_uring_available"]:
        print(f"io_uring probe: {info['probe_reason']}")
    print(f"ring flags: {' '.join(info['ring_flags']) or '-'}")
    print(f"features: {' '.join(info['features']) or '-'}")
    print(f"opcodes: {' '.join(info['opcodes']) or '-'}")
    print(f"buffer ring: {_yes(info['buffer_ring'])}")
    print(f"multishot recv: {_yes(info['multishot_recv'])}")
    print(f"multishot accept: {_yes(info['multishot_accept'])}")
    print(f"cancel by fd: {_yes(info['cancel_fd'])}")
    print(f"registered ring fd: {_yes(info['registered_ring'])}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `python -m uringloop | head`
        sys.stderr.close()
        sys.exit(0)
