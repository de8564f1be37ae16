#!/usr/bin/env python3
"""Run a third party's own test suite on the stock loop and on uringloop, and compare.

Not part of CI (each suite's three runs take minutes on the 2-CPU machine);
run by hand after changes to the loop's public behaviour (decisions 437-441
for anyio, 443-446 for aiohttp, 449-453 for websockets and uvicorn, 466-471
for httpx, httpcore and starlette; 540-542 all seven again after 472-536;
557-559 anyio, websockets and uvicorn on Python 3.13; 564-567 all seven on
3.12 and httpx, httpcore, starlette and aiohttp's other files on 3.13;
913-918 all seven on 3.13 and 3.12 after 861-895. For another Python, give
``--python`` that interpreter and ``--uringloop`` a copy of the tree built in
place for it (``make build PY=`` a venv of that interpreter with cffi and
setuptools); the script itself runs on the dev interpreter):

    /work/venv/bin/python tools/thirdparty_suite.py              # anyio, everything
    /work/venv/bin/python tools/thirdparty_suite.py --ways io_uring -- -k connect
    /work/venv/bin/python tools/thirdparty_suite.py --suite uvicorn
    /work/venv/bin/python tools/thirdparty_suite.py --suite websockets --src DIR
    /work/venv/bin/python tools/thirdparty_suite.py --suite aiohttp \
        --tests tests/test_web_functional.py --tests tests/test_client_functional.py
    /work/venv/bin/python tools/thirdparty_suite.py --suite httpcore \
        --python /root/.pyenv/versions/3.13.0/bin/python --uringloop /tmp/tree313

``--suite`` picks the suite (anyio by default):

* ``anyio``: its sdist (which carries ``tests/``), its ``test`` dependency
  group less coverage and uvloop/winloop, ``-m "not network"``; the plugin
  rewrites each plain asyncio case's ``anyio_backend`` and deselects the
  other loops' cases and trio's;
* ``websockets``: its asyncio implementation's tests, ``tests/asyncio`` and
  ``tests/legacy`` (unittest cases, collected by pytest). Its sdist has no
  tests: give a source tree at a release tag with ``--src``, or the script
  clones the tag named by the sdist's version from the Homepage in its
  metadata. websockets itself is installed from that tree, so that code and
  tests match; the dependencies are tox.ini's ``[testenv]`` deps less trio
  (its tests are not run);
* ``uvicorn``: its sdist's ``tests``, the ``standard`` extra and the ``dev``
  dependency group less the linters, type checkers, coverage, twine,
  pytest-xdist (one process: the runs replace uvicorn's ``addopts``, which
  ask for 8 workers) and uvloop (so that ``loop="auto"`` means the stock
  loop on the stock way);
* ``httpx``, ``httpcore``: their sdists' ``tests`` (the sdists lack the
  repositories' requirements.txt: its test entries are named in SUITES,
  unpinned), the package's extras the repository installs, ``-m "not
  network"`` (httpx: the internet) and ``-m "not trio"`` (httpcore:
  pytest-trio's tests); bound by tools/thirdparty_policy_plugin.py, which
  also deselects anyio's trio cases and points httpx's uvicorn test server
  (``loop="asyncio"``) at uringloop;
* ``starlette``: its sdist's ``tests``, the ``full`` extra and the ``dev``
  group less linters, type checkers, coverage, twine and pytest-codspeed;
  tools/thirdparty_policy_plugin.py too (its TestClient's portal thread runs
  anyio without a loop factory: the policy);
* ``aiohttp``: the version the interpreter running this has (not the newest;
  ``--version`` where it has none), its sdist's ``tests`` run against its
  wheel (C parser and writer: the sdist's ``aiohttp/`` is moved aside) and
  ``requirements/test.txt`` (when the file will not install whole, its pins
  go one by one and the failures are reported), ``-p no:xdist -o
  addopts=`` and aiohttp's own marker filter;
  the whole suite takes 20-40 minutes a way here, so name files with
  ``--tests``.

Steps, each skipped when its result is already in --work (default
/tmp/ul-thirdparty-SUITE):

1. the source: ``pip download --no-binary :all: --no-deps PACKAGE``, unpacked
   (or --src);
2. a venv (--venv) made with --python (default this interpreter), with the
   package and its test dependencies (those that will not install:
   ``--skip-dep NAME``). uringloop is NOT installed: the runs put
   --uringloop (default this checkout; built in place for the venv's
   interpreter, which is checked before the runs) on PYTHONPATH, and this
   checkout's tools/ for the plugins;
3. the suite, one process each way: ``stock``, ``io_uring`` and ``epoll``
   (uringloop with URINGLOOP_BACKEND forced), bound to the loop by
   tools/thirdparty_SUITE_plugin.py (``-p``; the suite's tests are not
   edited; ``--tests PATH`` narrows the paths), with ``-p no:cacheprovider
   --timeout 60``. Each run leaves
   ``<way>.txt`` (pytest's output, whose last lines count the uringloop loops
   made) and ``<way>.xml`` (JUnit) in --work (``--ways ''`` stops after
   the venv);
4. a summary (also ``summary.txt``): passed/failed/error/skipped per way and
   per test module (``*`` where the ways differ), the tests that pass on
   stock and not on a uringloop way (the candidates), and the tests that do
   not pass on stock (not ours, listed only).
"""

from __future__ import annotations

import argparse
import configparser
import os
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WAYS = ("stock", "io_uring", "epoll")


@dataclass(frozen=True)
class Suite:
    package: str
    # requirement names (lowercase prefixes) the runs never need
    skip_deps: tuple[str, ...]
    # pytest arguments before the paths, and the paths
    args: tuple[str, ...] = ()
    paths: tuple[str, ...] = ("tests",)
    # what the venv always gets besides the suite's own list: cffi (uringloop's
    # engine module imports it; the checkout is on PYTHONPATH) and
    # pytest-timeout (--timeout)
    always: tuple[str, ...] = ("cffi", "pytest", "pytest-timeout")
    sdist_has_tests: bool = True
    # the package's extras whose requirements the venv gets
    extras: tuple[str, ...] = ()
    # the test requirements: the pyproject dependency group of that name, or
    # (group None) tox.ini's [testenv] deps, or (tox False) only `deps`
    group: str | None = None
    tox: bool = False
    # requirements named here: the sdist lacks the repository's list
    deps: tuple[str, ...] = ()
    # the pytest plugin module in tools/ (default thirdparty_PACKAGE_plugin)
    plugin_module: str | None = None
    # a requirements file in the source tree (pip -r); when the whole of it
    # will not install, its pins go one by one and the failures are reported
    requirements: str | None = None
    # install the package's wheel of the sdist's version, not the sdist, and
    # move the sdist's package directory aside (pytest runs in the sdist, whose
    # pure-Python copy would shadow the wheel's compiled modules)
    wheel: bool = False
    # without --version: the version the running interpreter has installed, not
    # the newest
    dev_version: bool = False

    @property
    def plugin(self) -> str:
        return self.plugin_module or f"thirdparty_{self.package}_plugin"


SUITES = {
    # the test group's entries the runs never need: coverage, and the other
    # loops (their cases are deselected)
    "anyio": Suite(
        "anyio",
        skip_deps=("coverage", "uvloop", "winloop"),
        args=("-m", "not network"),
        group="test",
    ),
    # trio: the trio implementation's tests are not run
    "websockets": Suite(
        "websockets",
        skip_deps=("trio",),
        paths=("tests/asyncio", "tests/legacy"),
        sdist_has_tests=False,
        tox=True,
    ),
    # uvicorn's addopts ask for 8 xdist workers: one process here
    "uvicorn": Suite(
        "uvicorn",
        skip_deps=(
            "uvicorn",
            "ruff",
            "mypy",
            "types-",
            "coverage",
            "twine",
            "pytest-xdist",
            "uvloop",
        ),
        args=("-o", "addopts=-rxXs --strict-config --strict-markers"),
        extras=("standard",),
        group="dev",
    ),
    # httpx and httpcore: the sdists carry tests/ but not requirements.txt; the
    # test entries of the repository's requirements.txt (at the release),
    # unpinned, less coverage, the linters and docs. The "network" marker
    # needs the internet.
    "httpx": Suite(
        "httpx",
        skip_deps=(),
        args=("-m", "not network"),
        extras=("brotli", "cli", "http2", "socks", "zstd"),
        deps=("chardet", "cryptography", "trio", "trustme", "uvicorn"),
        plugin_module="thirdparty_policy_plugin",
    ),
    # trio: httpcore's tests import it; the @pytest.mark.trio tests
    # (pytest-trio's) are deselected. pytest-httpbin serves on loopback.
    "httpcore": Suite(
        "httpcore",
        skip_deps=(),
        args=("-m", "not trio"),
        extras=("asyncio", "trio", "http2", "socks"),
        deps=("pytest-httpbin", "pytest-trio", "werkzeug<3.1"),
        plugin_module="thirdparty_policy_plugin",
    ),
    # starlette: its [full] extra and dev group less itself, the linters, type
    # checkers, coverage, twine and pytest-codspeed (benchmarks/, not run).
    # trio stays (tests import it); anyio_backend is anyio's own "asyncio".
    "starlette": Suite(
        "starlette",
        skip_deps=("starlette", "ruff", "mypy", "types-", "coverage", "twine", "pytest-codspeed"),
        extras=("full",),
        group="dev",
        plugin_module="thirdparty_policy_plugin",
    ),
    # aiohttp (decisions 443-446, 470): the dev venv's version, its wheel (C
    # parser and writer), requirements/test.txt whole; aiohttp's own marker
    # filter, without its xdist and coverage addopts
    "aiohttp": Suite(
        "aiohttp",
        skip_deps=(),
        args=(
            "-p",
            "no:xdist",
            "-o",
            "addopts=",
            "-m",
            "not dev_mode and not autobahn and not internal",
        ),
        requirements="requirements/test.txt",
        wheel=True,
        dev_version=True,
    ),
}


def sh(cmd, **kw):
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def fetch_sdist(suite: Suite, work: Path, version: str | None) -> Path:
    """The unpacked sdist in work (downloaded once)."""
    name = suite.package
    spec = f"{name}=={version}" if version else name
    have = sorted(work.glob(f"{name}-*.tar.gz"))
    if version:
        have = [p for p in have if p.name == f"{name}-{version}.tar.gz"]
    if not have:
        sh(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-binary",
                ":all:",
                "--no-deps",
                spec,
                "-d",
                str(work),
            ]
        )
        have = sorted(work.glob(f"{name}-*.tar.gz"))
    sdist = have[-1]
    src = work / sdist.name[: -len(".tar.gz")]
    if not src.is_dir():
        with tarfile.open(sdist) as tf:
            tf.extractall(work)
    if suite.wheel and (src / name).is_dir():
        (src / name).rename(src / f"{name}.sdist-source")
    return src


def clone_tests(sdist_src: Path, work: Path) -> Path:
    """A source tree with tests: the tag of the sdist's version, cloned from
    the Homepage its metadata names."""
    meta = Parser().parsestr((sdist_src / "PKG-INFO").read_text())
    version = meta["Version"]
    home = next(
        (
            u.split(",", 1)[1].strip()
            for u in meta.get_all("Project-URL", [])
            if u.lower().startswith(("homepage,", "source,"))
        ),
        None,
    )
    dest = work / f"{sdist_src.name}-git"
    if not dest.is_dir():
        if home is None:
            raise SystemExit(f"{sdist_src.name}: no tests in the sdist and no Homepage: use --src")
        sh(["git", "clone", "-q", "--depth", "1", "--branch", version, home, str(dest)])
    return dest


def _requirements(lines) -> list[str]:
    return [" ".join(d.split()) for d in lines if isinstance(d, str) and d.strip()]


def test_deps(suite: Suite, src: Path) -> list[str]:
    deps = list(suite.deps)
    if suite.tox:
        tox = configparser.ConfigParser(interpolation=None)
        tox.read(src / "tox.ini")
        lines = []
        for line in tox.get("testenv", "deps", fallback="").splitlines():
            # "py311,py312,...: dep" applies to the Python environments
            lines.append(line.split(":", 1)[1] if re.match(r"^[\w,]+:\s", line) else line)
        deps += _requirements(lines)
    else:
        import tomllib  # 3.11+: the script runs on the dev interpreter

        meta = tomllib.loads((src / "pyproject.toml").read_text())
        if suite.group is not None:
            deps += _requirements(meta.get("dependency-groups", {}).get(suite.group, []))
        for extra in suite.extras:
            deps += _requirements(meta["project"]["optional-dependencies"][extra])
    out = []
    for dep in deps:
        name = re.split(r"[\s;<>=!~\[]", dep, maxsplit=1)[0].lower()
        if not name.startswith(suite.skip_deps):
            out.append(dep)
    return out


def make_venv(
    suite: Suite, venv: Path, src: Path, skip: list[str], python: str = sys.executable
) -> Path:
    py = venv / "bin" / "python"
    stamp = venv / f".{src.name}-installed"
    if not py.exists():
        sh([python, "-m", "venv", str(venv)])
    if not stamp.exists():
        deps = [
            d
            for d in test_deps(suite, src)
            if not any(d.lower().startswith(s.lower()) for s in skip)
        ]
        pip = [str(py), "-m", "pip", "install", "-q"]
        if suite.wheel:
            version = Parser().parsestr((src / "PKG-INFO").read_text())["Version"]
            pip += ["--prefer-binary", "--only-binary", suite.package]
            target = f"{suite.package}=={version}"
        else:
            target = str(src)
        req = src / suite.requirements if suite.requirements else None
        cmd = [*pip, target, *suite.always, *deps, *(["-r", str(req)] if req else [])]
        print("+", " ".join(cmd), flush=True)
        if subprocess.run(cmd, check=False).returncode != 0:
            if req is None:
                raise SystemExit("the venv's install failed (--skip-dep NAME leaves one out)")
            # the file's pins one by one, the failures reported
            sh([*pip, target, *suite.always, *deps])
            failed = []
            for line in req.read_text().splitlines():
                pin = line.split("#", 1)[0].strip()
                name = re.split(r"[\s;<>=!~\[]", pin, maxsplit=1)[0].lower()
                if not pin or pin.startswith("-") or name == suite.package:
                    continue
                if any(pin.lower().startswith(s.lower()) for s in skip):
                    continue
                if subprocess.run([*pip, pin], check=False).returncode != 0:
                    failed.append(pin)
            print(f"{req.name}: would not install: {failed or 'none'}", flush=True)
        stamp.touch()
    return py


def check_uringloop(py: Path, tree: Path) -> str:
    """The venv's interpreter imports uringloop's built modules from tree (not
    an installed copy); its version and the module's path, for the log."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    env.pop("URINGLOOP_BACKEND", None)
    code = (
        "import sys, uringloop, uringloop._sched; print(sys.version.split()[0], uringloop.__file__)"
    )
    # cwd "/": python -c puts its cwd first on sys.path (a checkout there would
    # be imported instead)
    proc = subprocess.run(
        [str(py), "-c", code], env=env, cwd=os.sep, capture_output=True, text=True, check=False
    )
    where = proc.stdout.split()[-1] if proc.returncode == 0 and proc.stdout.split() else ""
    if not where.startswith(str(tree) + os.sep):
        raise SystemExit(
            f"{py} does not import uringloop built in {tree} "
            f"(make build PY= this interpreter there):\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return proc.stdout.strip()


def run_way(
    suite: Suite,
    py: Path,
    src: Path,
    work: Path,
    way: str,
    extra: list[str],
    paths: list[str] | None = None,
    tree: Path = REPO,
) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), str(REPO / "tools")])
    env["UL_THIRDPARTY_LOOP"] = "stock" if way == "stock" else "uringloop"
    env["URINGLOOP_BACKEND"] = "auto" if way == "stock" else way
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [
        str(py),
        "-m",
        "pytest",
        "-p",
        suite.plugin,
        "-p",
        "no:cacheprovider",
        "--timeout",
        "60",
        *suite.args,
        "-q",
        "-rfEs",
        f"--junitxml={work / (way + '.xml')}",
        *extra,
        *(paths or suite.paths),
    ]
    print("+", f"[{way}]", " ".join(cmd), flush=True)
    with open(work / f"{way}.txt", "w") as out:
        proc = subprocess.run(
            cmd, cwd=src, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=3600
        )
    # pytest's closing line (output at interpreter exit may follow it)
    lines = (work / f"{way}.txt").read_text().strip().splitlines() or [""]
    closing = [ln for ln in lines if re.search(r" in [\d.]+s\b", ln)]
    print(f"[{way}] exit {proc.returncode}:", (closing or lines)[-1], flush=True)
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
        counts = {
            k: sum(1 for v in r.values() if v == k)
            for k in ("passed", "failed", "error", "skipped")
        }
        lines.append(f"{w:9} " + "  ".join(f"{k} {n}" for k, n in counts.items()))
    # per test module (the classname less its classes, CapWords by
    # convention): passed/failed+error/skipped, * where the ways differ
    per_file: dict[str, dict[str, tuple[int, int, int]]] = {}
    for w, r in res.items():
        for tid, v in r.items():
            parts = tid.split("::")[0].split(".")
            while len(parts) > 1 and parts[-1][:1].isupper():
                parts.pop()
            module = ".".join(parts)
            p, x, s = per_file.setdefault(module, {}).get(w, (0, 0, 0))
            per_file[module][w] = (
                p + (v == "passed"),
                x + (v in ("failed", "error")),
                s + (v == "skipped"),
            )
    lines.append("\nper module (passed/failed+error/skipped; * where the ways differ):")
    for module in sorted(per_file):
        sig = {w: per_file[module].get(w, (0, 0, 0)) for w in res}
        mark = "*" if len(set(sig.values())) > 1 else " "
        lines.append(
            f"{mark} {module:50} " + "  ".join(f"{w}={p}/{x}/{s}" for w, (p, x, s) in sig.items())
        )
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
    ap.add_argument(
        "--suite", choices=sorted(SUITES), default="anyio", help="whose suite (default %(default)s)"
    )
    ap.add_argument(
        "--work",
        type=Path,
        default=None,
        help="download, outputs and summary (default /tmp/ul-thirdparty-SUITE)",
    )
    ap.add_argument("--venv", type=Path, default=None, help="the test venv (default WORK/venv)")
    ap.add_argument(
        "--version",
        "--anyio-version",
        dest="version",
        default=None,
        help="pin the package (default: newest; aiohttp: the version this interpreter has)",
    )
    ap.add_argument(
        "--src",
        type=Path,
        default=None,
        help="a source tree with tests/ to use instead of the sdist",
    )
    ap.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter the venv is made with (default this one)",
    )
    ap.add_argument(
        "--uringloop",
        type=Path,
        default=REPO,
        metavar="DIR",
        help="the uringloop checkout the runs import, built in place for "
        "--python's version (default this checkout)",
    )
    ap.add_argument(
        "--skip-dep",
        action="append",
        default=[],
        metavar="NAME",
        help="leave out a test dependency that will not install (repeatable)",
    )
    ap.add_argument(
        "--ways", default=",".join(WAYS), help="comma-separated subset of " + ",".join(WAYS)
    )
    ap.add_argument(
        "--tests",
        action="append",
        default=None,
        metavar="PATH",
        help="run these test files or directories (relative to the source tree) "
        "instead of the suite's (repeatable)",
    )
    ap.add_argument("--summary-only", action="store_true", help="compare the last runs' XML")
    ap.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --)")
    args = ap.parse_args()
    suite = SUITES[args.suite]
    ways = [w for w in args.ways.split(",") if w]
    if unknown := set(ways) - set(WAYS):
        ap.error(f"unknown ways: {sorted(unknown)}")
    work = (args.work or Path(f"/tmp/ul-thirdparty-{suite.package}")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not args.summary_only:
        if args.src is not None:
            src = args.src.resolve()
        else:
            version = args.version
            if version is None and suite.dev_version:
                from importlib.metadata import version as installed_version

                version = installed_version(suite.package)
            src = fetch_sdist(suite, work, version)
            if not suite.sdist_has_tests:
                src = clone_tests(src, work)
        py = make_venv(
            suite, (args.venv or work / "venv").resolve(), src, args.skip_dep, args.python
        )
        tree = args.uringloop.resolve()
        found = check_uringloop(py, tree) if ways else ""
        print(
            f"{suite.package} source: {src}; uringloop from {tree} (PYTHONPATH): Python {found}",
            flush=True,
        )
        for way in ways:
            subprocess.run(["uptime"], check=False)
            run_way(suite, py, src, work, way, args.pytest_args, args.tests, tree)
    print(summarize(work, ways), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
