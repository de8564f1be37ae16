#!/usr/bin/env python3
"""Run anyio's own test suite on the stock loop and on uringloop, and compare.

Not part of CI (its three runs take about 8 minutes on the 2-CPU machine);
run by hand after changes to the loop's public behaviour (decisions 437-441):

    /work/venv/bin/python tools/thirdparty_suite.py              # everything
    /work/venv/bin/python tools/thirdparty_suite.py --ways io_uring -k connect

Steps, each skipped when its result is already in --work:

1. ``pip download --no-binary :all: --no-deps anyio`` (the sdist carries
   ``tests/``) and unpack it;
2. a venv (--venv) made with this interpreter, with that anyio and its
   ``test`` dependency group from the sdist's pyproject (less coverage and
   uvloop/winloop, which the runs deselect). uringloop is NOT installed: the
   runs put this checkout (built in place) on PYTHONPATH;
3. anyio's suite, one process each way: ``stock``, ``io_uring`` and ``epoll``
   (uringloop with URINGLOOP_BACKEND forced), bound to the loop by
   tools/thirdparty_anyio_plugin.py (``-p``; anyio's tests are not edited),
   with ``-p no:cacheprovider --timeout 60 -m "not network"``; trio and the
   other loops' cases are deselected. Each run leaves ``<way>.txt`` (pytest's
   output) and ``<way>.xml`` (JUnit) in --work;
4. a summary (also ``summary.txt``): passed/failed/error/skipped per way, the
   tests that pass on stock and not on a uringloop way (the candidates), and
   the tests that do not pass on stock (not ours, listed only).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN = "thirdparty_anyio_plugin"
# the test group's entries the runs never need: coverage, and the other loops
# (their cases are deselected)
SKIP_DEPS = ("coverage", "uvloop", "winloop")
WAYS = ("stock", "io_uring", "epoll")


def sh(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def fetch_sdist(work: Path, version: str | None) -> Path:
    """The unpacked anyio sdist in work (downloaded once)."""
    spec = f"anyio=={version}" if version else "anyio"
    have = sorted(work.glob("anyio-*.tar.gz"))
    if version:
        have = [p for p in have if p.name == f"anyio-{version}.tar.gz"]
    if not have:
        sh([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
            spec, "-d", str(work)])
        have = sorted(work.glob("anyio-*.tar.gz"))
    sdist = have[-1]
    src = work / sdist.name[: -len(".tar.gz")]
    if not src.is_dir():
        with tarfile.open(sdist) as tf:
            tf.extractall(work)
    return src


def test_deps(src: Path) -> list[str]:
    import tomllib  # 3.11+: the script runs on the dev interpreter

    meta = tomllib.loads((src / "pyproject.toml").read_text())
    out = []
    for dep in meta.get("dependency-groups", {}).get("test", []):
        if not isinstance(dep, str):
            continue  # an include-group table
        dep = " ".join(dep.split())
        name = dep.split(";")[0].strip()
        if not name.lower().startswith(SKIP_DEPS):
            out.append(dep)
    return out


def make_venv(venv: Path, src: Path) -> Path:
    py = venv / "bin" / "python"
    stamp = venv / f".{src.name}-installed"
    if not py.exists():
        sh([sys.executable, "-m", "venv", str(venv)])
    if not stamp.exists():
        # cffi: uringloop's engine module imports it (the checkout is on PYTHONPATH)
        sh([str(py), "-m", "pip", "install", "-q", str(src), "cffi", *test_deps(src)])
        stamp.touch()
    return py


def run_way(py: Path, src: Path, work: Path, way: str, extra: list[str]) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tools")])
    env["UL_THIRDPARTY_LOOP"] = "stock" if way == "stock" else "uringloop"
    env["URINGLOOP_BACKEND"] = "auto" if way == "stock" else way
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [str(py), "-m", "pytest", "-p", PLUGIN, "-p", "no:cacheprovider", "--timeout", "60",
           "-m", "not network", "-q", "-rfEs", f"--junitxml={work / (way + '.xml')}", *extra,
           "tests"]
    print("+", f"[{way}]", " ".join(cmd), flush=True)
    with open(work / f"{way}.txt", "w") as out:
        proc = subprocess.run(cmd, cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT,
                              timeout=3600)
    print(f"[{way}] exit {proc.returncode}:",
          (work / f"{way}.txt").read_text().strip().splitlines()[-1], flush=True)
    return proc.returncode


def outcomes(xml: Path) -> dict[str, str]:
    """test id -> passed / failed / error / skipped (an error in teardown of a
    passed test counts as error)."""
    out: dict[str, str] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        tid = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if "error" in kinds:
            kind = "error"
        elif "failure" in kinds:
            kind = "failed"
        elif "skipped" in kinds:
            kind = "skipped"
        else:
            kind = "passed"
        if out.get(tid) not in ("error", "failed"):
            out[tid] = kind
    return out


def summarize(work: Path, ways: list[str]) -> str:
    res = {w: outcomes(work / f"{w}.xml") for w in ways if (work / f"{w}.xml").exists()}
    lines = []
    for w, r in res.items():
        counts = {k: sum(1 for v in r.values() if v == k)
                  for k in ("passed", "failed", "error", "skipped")}
        lines.append(f"{w:9} " + "  ".join(f"{k} {n}" for k, n in counts.items()))
    stock = res.get("stock")
    if stock is not None:
        for w, r in res.items():
            if w == "stock":
                continue
            bad = sorted(t for t, v in stock.items() if v == "passed" and r.get(t) != "passed")
            lines.append(f"\npass on stock, not on {w}: {len(bad)}")
            lines += [f"  {r.get(t, 'missing')}: {t}" for t in bad]
            better = sorted(t for t, v in r.items() if v == "passed" and stock.get(t) != "passed")
            lines.append(f"pass on {w}, not on stock: {len(better)}")
            lines += [f"  {t}" for t in better]
        not_ours = sorted(t for t, v in stock.items() if v in ("failed", "error"))
        lines.append(f"\nfail or error on stock (not ours, listed only): {len(not_ours)}")
        lines += [f"  {stock[t]}: {t}" for t in not_ours]
    text = "\n".join(lines) + "\n"
    (work / "summary.txt").write_text(text)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ul-thirdparty-anyio"),
                    help="download, outputs and summary (default %(default)s)")
    ap.add_argument("--venv", type=Path, default=None,
                    help="the test venv (default WORK/venv)")
    ap.add_argument("--anyio-version", default=None, help="pin anyio (default: newest)")
    ap.add_argument("--ways", default=",".join(WAYS), help="comma-separated subset of "
                    + ",".join(WAYS))
    ap.add_argument("--summary-only", action="store_true", help="compare the last runs' XML")
    ap.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = ap.parse_args()
    ways = [w for w in args.ways.split(",") if w]
    if unknown := set(ways) - set(WAYS):
        ap.error(f"unknown ways: {sorted(unknown)}")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        src = fetch_sdist(work, args.anyio_version)
        py = make_venv((args.venv or work / "venv").resolve(), src)
        print(f"anyio sdist: {src.name}; uringloop from {REPO} (PYTHONPATH)", flush=True)
        for way in ways:
            subprocess.run(["uptime"], check=False)
            run_way(py, src, work, way, args.pytest_args)
    print(summarize(work, ways), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
