"""The driver of the third-party suites, tools/thirdparty_suite.py (decisions
438, 449, 466, 470), without the suites: its summary, its test dependencies,
its `--tests` paths, its requirements file's one-by-one fallback, and
`--python`/`--uringloop` (another interpreter and a tree built for it, 913).

No network and no venv: subprocess.run is replaced where the driver would
call pip or pytest.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"


@pytest.fixture(scope="module")
def driver():
    spec = importlib.util.spec_from_file_location("thirdparty_suite", TOOLS / "thirdparty_suite.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["thirdparty_suite"] = mod  # dataclasses look the module up
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        del sys.modules["thirdparty_suite"]


def _junit(path: Path, cases: dict[str, str]) -> None:
    body = []
    for tid, kind in cases.items():
        cls, name = tid.rsplit("::", 1)
        inner = {
            "passed": "",
            "failed": "<failure/>",
            "error": "<error/>",
            "skipped": "<skipped/>",
        }[kind]
        body.append(f'<testcase classname="{cls}" name="{name}">{inner}</testcase>')
    path.write_text(f"<testsuites><testsuite>{''.join(body)}</testsuite></testsuites>")


def test_summary_counts_modules_and_candidates(driver, tmp_path):
    _junit(
        tmp_path / "stock.xml",
        {
            "tests.test_a::t1": "passed",
            "tests.test_a::t2": "passed",
            "tests.test_b::t3": "failed",
            "tests.test_b.TestC::t4": "skipped",
        },
    )
    _junit(
        tmp_path / "io_uring.xml",
        {
            "tests.test_a::t1": "passed",
            "tests.test_a::t2": "error",
            "tests.test_b::t3": "passed",
            "tests.test_b.TestC::t4": "skipped",
        },
    )
    text = driver.summarize(tmp_path, ["stock", "io_uring"])
    assert "stock     passed 2  failed 1  error 0  skipped 1" in text
    assert "io_uring  passed 2  failed 0  error 1  skipped 1" in text
    lines = text.splitlines()
    # per module, marked where the ways differ
    assert [ln.split()[0] for ln in lines if "tests.test_" in ln and "=" in ln] == ["*", "*"]
    assert "stock=2/0/0  io_uring=1/1/0" in text
    assert "stock=0/1/1  io_uring=1/0/1" in text  # a class's tests count in its module
    # the candidate, the reverse, and stock's own failure
    assert "pass on stock, not on io_uring: 1" in text
    assert "  error: tests.test_a::t2" in lines
    assert "pass on io_uring, not on stock: 1" in text
    assert "  failed: tests.test_b::t3" in lines
    assert (tmp_path / "summary.txt").read_text() == text


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="the driver reads pyproject.toml with tomllib (3.11+; it runs on the dev interpreter)",
)
def test_deps_from_group_extras_and_named(driver, tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "starlette"\n'
        '[project.optional-dependencies]\nfull = ["jinja2", "httpx>=0.27"]\n'
        '[dependency-groups]\ndev = ["starlette[full]", "mypy>=1", "trio>=0.3", '
        '"pytest-codspeed", "blockbuster"]\n'
    )
    assert driver.test_deps(driver.SUITES["starlette"], tmp_path) == [
        "trio>=0.3",
        "blockbuster",
        "jinja2",
        "httpx>=0.27",
    ]
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "httpx"\n[project.optional-dependencies]\n'
        'brotli = ["brotli"]\ncli = ["click==8.*"]\nhttp2 = ["h2"]\nsocks = ["socksio"]\n'
        'zstd = ["zstandard"]\n'
    )
    deps = driver.test_deps(driver.SUITES["httpx"], tmp_path)
    assert deps[:5] == ["chardet", "cryptography", "trio", "trustme", "uvicorn"]
    assert deps[5:] == ["brotli", "click==8.*", "h2", "socksio", "zstandard"]


def test_tests_option_replaces_the_suite_paths(driver, tmp_path, monkeypatch):
    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        kw["stdout"].write(" 1 passed in 0.01s\n")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(driver.subprocess, "run", fake_run)
    suite = driver.SUITES["aiohttp"]
    driver.run_way(
        suite, Path("py"), tmp_path, tmp_path, "epoll", ["-k", "x"], ["tests/test_loop.py"]
    )
    driver.run_way(suite, Path("py"), tmp_path, tmp_path, "stock", [])
    assert seen[0][-3:] == ["-k", "x", "tests/test_loop.py"]
    assert seen[0][seen[0].index("-p") + 1] == "thirdparty_aiohttp_plugin"
    assert seen[1][-1] == "tests"
    assert driver.SUITES["starlette"].plugin == "thirdparty_policy_plugin"


def test_requirements_fall_back_to_one_pin_at_a_time(driver, tmp_path, monkeypatch, capsys):
    src = tmp_path / "aiohttp-3.0"
    (src / "requirements").mkdir(parents=True)
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: aiohttp\nVersion: 3.0\n")
    (src / "requirements" / "test.txt").write_text(
        "-r base.txt\naiohttp==3.0\ngood==1  # a comment\nbad==2\n"
    )
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    calls = []

    def fake_run(cmd, check=False, **kw):
        calls.append(cmd)
        failed = "-r" in cmd or cmd[-1] == "bad==2"
        if check and failed:
            raise subprocess.CalledProcessError(1, cmd)
        return subprocess.CompletedProcess(cmd, 1 if failed else 0)

    monkeypatch.setattr(driver.subprocess, "run", fake_run)
    suite = driver.SUITES["aiohttp"]
    monkeypatch.setattr(driver, "test_deps", lambda suite, src: [])
    driver.make_venv(suite, venv, src, [])
    # the wheel of the sdist's version, the whole file first, then pin by pin
    assert calls[0][-3:] == ["pytest-timeout", "-r", str(src / "requirements" / "test.txt")]
    assert "aiohttp==3.0" in calls[0] and "--only-binary" in calls[0]
    assert [c[-1] for c in calls[2:]] == ["good==1", "bad==2"]
    assert "test.txt: would not install: ['bad==2']" in capsys.readouterr().out
    assert (venv / ".aiohttp-3.0-installed").exists()


def test_python_and_uringloop_options(driver, tmp_path, monkeypatch):
    """--python makes the venv; --uringloop's tree comes first on the runs'
    PYTHONPATH, this checkout's tools/ after it (decision 913)."""
    calls = []

    def fake_run(cmd, check=False, **kw):
        calls.append((cmd, kw.get("env")))
        if "stdout" in kw:
            kw["stdout"].write(" 1 passed in 0.01s\n")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(driver.subprocess, "run", fake_run)
    monkeypatch.setattr(driver, "test_deps", lambda suite, src: [])
    suite = driver.SUITES["anyio"]
    (tmp_path / "venv").mkdir()
    driver.make_venv(suite, tmp_path / "venv", tmp_path, [], "/opt/py3.13/bin/python")
    assert calls[0][0] == ["/opt/py3.13/bin/python", "-m", "venv", str(tmp_path / "venv")]
    tree = tmp_path / "tree313"
    driver.run_way(suite, Path("py"), tmp_path, tmp_path, "io_uring", [], tree=tree)
    cmd, env = calls[-1]
    assert cmd[:3] == ["py", "-m", "pytest"]
    assert env["PYTHONPATH"].split(":") == [str(tree), str(TOOLS)]
    assert env["URINGLOOP_BACKEND"] == "io_uring"


def test_uringloop_tree_is_checked(driver, tmp_path):
    """The venv's interpreter must import uringloop's built modules from the
    tree given, not fail and not find another copy (this checkout, the
    cwd here, among them: decision 913)."""
    tree = tmp_path / "tree"
    (tree / "uringloop").mkdir(parents=True)
    (tree / "uringloop" / "__init__.py").write_text("")
    (tree / "uringloop" / "_sched.py").write_text("")  # stands for the built module
    found = driver.check_uringloop(Path(sys.executable), tree)
    assert found == f"{sys.version.split()[0]} {tree / 'uringloop' / '__init__.py'}"
    (tree / "uringloop" / "_sched.py").unlink()  # an unbuilt tree
    with pytest.raises(SystemExit, match="does not import uringloop built in"):
        driver.check_uringloop(Path(sys.executable), tree)
    with pytest.raises(SystemExit, match="does not import uringloop built in"):
        driver.check_uringloop(Path(sys.executable), tmp_path / "empty")
