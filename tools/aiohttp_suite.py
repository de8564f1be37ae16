#!/usr/bin/env python3
"""Run aiohttp's own test suite three ways: stock asyncio, uringloop io_uring,
uringloop epoll, and list what differs (docs/design.md decisions 443-448).

Not run by CI (the suite takes minutes per way).  Steps, each skipped when its
result is already in the work directory:

1. ``pip download --no-binary :all: --no-deps aiohttp==<version>`` (the version
   installed for --python-ref, the dev interpreter by default) and unpack it;
   the sdist carries ``tests/`` and ``requirements/``.
2. A venv (``<workdir>/venv``, from --python) with the aiohttp wheel of that
   version and ``requirements/test.txt``; when the whole file will not
   install, its pins go one by one and the ones that fail are reported.
   uringloop is NOT installed: this checkout (built in place) goes on
   PYTHONPATH, with tools/ for the plugin.
3. pytest in the unpacked sdist with ``-p thirdparty_aiohttp_plugin``
   (tools/thirdparty_aiohttp_plugin.py on tools/thirdparty_loop.py:
   UL_THIRDPARTY_LOOP=stock leaves asyncio alone, otherwise a policy makes
   uringloop loops, so aiohttp's ``pyloop``
   factory, its ``loop`` fixture and ``run_app`` all get uringloop), with
   ``-p no:cacheprovider -p no:xdist --timeout 60``, aiohttp's marker filter,
   and a junit XML per way.
4. A summary: passed/failed/skipped per way and per file, and every test that
   passes on stock but not on a uringloop way (and the reverse).

Usage::

    python tools/aiohttp_suite.py [--workdir /tmp/aiohttp-suite]
        [--python ~/.pyenv/versions/3.11.7/bin/python] [--ways stock,io_uring,epoll]
        [--summary-only] [test files relative to aiohttp's tests/ ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAYS = ("stock", "io_uring", "epoll")
MARKERS = "not dev_mode and not autobahn and not internal"


def run(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=False, **kw)


def aiohttp_version(python: str) -> str:
    out = subprocess.run(
        [python, "-c", "import aiohttp; print(aiohttp.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def get_sdist(work: Path, version: str) -> Path:
    src = work / f"aiohttp-{version}"
    if not (src / "tests").is_dir():
        work.mkdir(parents=True, exist_ok=True)
        tgz = work / f"aiohttp-{version}.tar.gz"
        if not tgz.exists():
            cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
            run([*cmd, f"aiohttp=={version}", "-d", str(work)]).check_returncode()
        with tarfile.open(tgz) as tf:
            if sys.version_info >= (3, 12):
                tf.extractall(work, filter="data")
            else:
                tf.extractall(work)
        if not (src / "tests").is_dir():
            sys.exit(
                f"{tgz} has no tests/: take tests/ and requirements/ from the v{version} tag "
                f"of github.com/aio-libs/aiohttp into {src}"
            )
    # pytest runs in src, whose aiohttp/ (pure Python: no compiled parser or
    # writer) would shadow the installed wheel's (decision 445)
    if (src / "aiohttp").is_dir():
        (src / "aiohttp").rename(src / "aiohttp.sdist-source")
    return src


def make_venv(work: Path, src: Path, python: str, version: str) -> Path:
    venv = work / "venv"
    vpy = venv / "bin" / "python"
    marker = venv / ".uringloop-suite-ready"
    if marker.exists():
        return vpy
    run([python, "-m", "venv", str(venv)]).check_returncode()
    pip = [str(vpy), "-m", "pip", "install", "-q", "--prefer-binary"]
    run([*pip, "--upgrade", "pip"])
    req = src / "requirements" / "test.txt"
    if run([*pip, f"aiohttp=={version}", "-r", str(req)]).returncode != 0:
        run([*pip, "--only-binary", "aiohttp", f"aiohttp=={version}"]).check_returncode()
        skipped = []
        for line in req.read_text().splitlines():
            pin = line.split("#", 1)[0].strip()
            if not pin or pin.startswith("-") or pin.split("==")[0] == "aiohttp":
                continue
            if run([*pip, pin]).returncode != 0:
                skipped.append(pin)
        print("requirements that would not install:", skipped or "none")
    run([*pip, "cffi"]).check_returncode()  # uringloop's engine module needs it
    marker.write_text(version)
    return vpy


def run_way(vpy: Path, src: Path, work: Path, way: str, files: list[str]) -> Path:
    xml = work / f"{way}.xml"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tools"), str(ROOT)])
    env.pop("URINGLOOP_BACKEND", None)
    if way == "stock":
        env["UL_THIRDPARTY_LOOP"] = "stock"
    else:
        env["UL_THIRDPARTY_LOOP"] = "uringloop"
        env["URINGLOOP_BACKEND"] = way
    cmd = [
        str(vpy), "-m", "pytest", "-p", "thirdparty_aiohttp_plugin",
        "-p", "no:cacheprovider", "-p", "no:xdist", "--timeout", "60",
        "-o", "addopts=", "-m", MARKERS, "-q", "-rfE", f"--junitxml={xml}",
        *([f"tests/{f}" for f in files] or ["tests"]),
    ]  # fmt: skip
    with open(work / f"{way}.log", "w") as log:
        run(cmd, cwd=src, env=env, stdout=log, stderr=subprocess.STDOUT)
    return xml


def outcomes(xml: Path) -> dict[str, str]:
    """test id -> passed/failed/error/skipped (xfail counts as skipped)."""
    res = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        tid = f"{case.get('classname')}::{case.get('name')}"
        kids = {child.tag for child in case}
        if "error" in kids:  # pytest puts a teardown error on the same testcase
            res[tid] = "error"
        elif "failure" in kids:
            res[tid] = "failed"
        elif "skipped" in kids:
            res[tid] = "skipped"
        else:
            res[tid] = "passed"
    return res


def summary(work: Path, ways: list[str]) -> None:
    got = {w: outcomes(work / f"{w}.xml") for w in ways if (work / f"{w}.xml").exists()}
    print("\n== totals (passed/failed/error/skipped)")
    per_file: dict[str, dict[str, Counter]] = defaultdict(dict)
    for w, res in got.items():
        c = Counter(res.values())
        print(f"{w:9s} {c['passed']:5d} {c['failed']:4d} {c['error']:4d} {c['skipped']:4d}")
        for tid, o in res.items():
            f = tid.split("::")[0].removeprefix("tests.").split(".")[0]  # module, not class
            per_file[f].setdefault(w, Counter())[o] += 1
    print("\n== per file (passed/failed+error/skipped; * where the ways differ)")
    for f in sorted(per_file):
        cols = {w: per_file[f].get(w, Counter()) for w in got}
        sig = {w: (c["passed"], c["failed"] + c["error"], c["skipped"]) for w, c in cols.items()}
        mark = "*" if len(set(sig.values())) > 1 else " "
        print(f"{mark}{f:45s} " + "  ".join(f"{w}={p}/{x}/{s}" for w, (p, x, s) in sig.items()))
    if "stock" not in got:
        return
    stock = got["stock"]
    for w in got:
        if w == "stock":
            continue
        worse = sorted(t for t, o in stock.items() if o == "passed" and got[w].get(t) != "passed")
        better = sorted(t for t, o in got[w].items() if o == "passed" and stock.get(t) != "passed")
        print(f"\n== passed on stock, not on {w}: {len(worse)}")
        for t in worse:
            print(f"  {got[w].get(t, 'missing'):8s} {t}")
        print(f"== passed on {w}, not on stock: {len(better)}")
        for t in better:
            print(f"  {stock.get(t, 'missing'):8s} {t}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workdir", default="/tmp/aiohttp-suite", type=Path)
    ap.add_argument(
        "--python",
        default=sys.executable,
        help="the venv's interpreter (3.11 by default: this one)",
    )
    ap.add_argument(
        "--python-ref", default=sys.executable, help="the interpreter whose aiohttp version is used"
    )
    ap.add_argument("--version", help="aiohttp version (default: the one --python-ref imports)")
    ap.add_argument("--ways", default=",".join(WAYS))
    ap.add_argument(
        "--summary-only", action="store_true", help="only compare the XML files already there"
    )
    ap.add_argument(
        "files", nargs="*", help="test files under aiohttp's tests/ (default: all of it)"
    )
    args = ap.parse_args()
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    work = args.workdir.resolve()
    if not args.summary_only:
        version = args.version or aiohttp_version(args.python_ref)
        src = get_sdist(work, version)
        vpy = make_venv(work, src, args.python, version)
        for w in ways:
            run_way(vpy, src, work, w, args.files)
    summary(work, ways)


if __name__ == "__main__":
    main()
