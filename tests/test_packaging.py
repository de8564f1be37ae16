"""What a user of the package meets before any loop runs: type information
(py.typed, annotated public names) and a clear message when the compiled
extensions are missing (a source checkout that was never built)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import uringloop

PKG = Path(uringloop.__file__).resolve().parent


def test_py_typed_ships():
    # in CI this checks the installed package, so package-data must carry it
    assert (PKG / "py.typed").is_file()


def test_public_names_are_annotated():
    assert set(uringloop.__all__) >= {
        "Loop", "new_event_loop", "EventLoopPolicy", "install", "run", "backend_info",
    }  # fmt: skip
    assert typing.get_type_hints(uringloop.new_event_loop) == {"return": uringloop.Loop}
    assert typing.get_type_hints(uringloop.install) == {"return": type(None)}
    hints = typing.get_type_hints(uringloop.run)
    assert set(hints) == {"main", "debug", "return"}
    assert typing.get_type_hints(uringloop.backend_info)["return"] is not None
    assert issubclass(uringloop.EventLoopPolicy, asyncio.AbstractEventLoopPolicy)
    assert issubclass(uringloop.Loop, asyncio.AbstractEventLoop)


def _unbuilt_copy(tmp_path: Path) -> Path:
    """The package's Python and C sources without any compiled extension."""
    root = tmp_path / "checkout"
    shutil.copytree(
        PKG,
        root / "uringloop",
        ignore=shutil.ignore_patterns("*.so", "__pycache__", "*.o"),
    )
    assert not list((root / "uringloop").glob("*.so"))
    return root


def test_unbuilt_checkout_says_what_to_run(tmp_path):
    """``python -m uringloop`` (and ``import uringloop``) run from a source
    checkout with no compiled extensions name the missing extensions and the
    commands to run, instead of a "circular import" error."""
    root = _unbuilt_copy(tmp_path)
    for args in (["-m", "uringloop"], ["-c", "import uringloop"]):
        proc = subprocess.run(
            [sys.executable, *args],  # the checkout (cwd) comes first on sys.path
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
        )
        out = proc.stdout
        assert proc.returncode != 0, out
        assert "compiled extensions" in out and "are not built" in out, out
        assert "make build" in out and "pip install ." in out, out
        assert "partially initialized" not in out and "circular import" not in out, out


def test_unbuilt_message_only_when_really_unbuilt(tmp_path):
    """Another ImportError inside the package is not disguised as 'not built'."""
    root = _unbuilt_copy(tmp_path)
    for so in PKG.glob("*.so"):
        shutil.copy2(so, root / "uringloop" / so.name)
    (root / "uringloop" / "sock.py").write_text("import no_such_module_here\n")
    proc = subprocess.run(
        [sys.executable, "-c", "import uringloop"],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "No module named 'no_such_module_here'" in proc.stdout, proc.stdout
    assert "are not built" not in proc.stdout, proc.stdout


def test_every_subpackage_is_packaged():
    """Each directory of the source package with an __init__.py is listed in
    pyproject's [tool.setuptools] packages (else `pip install .` leaves it out
    and the installed package cannot be imported)."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is in the standard library from Python 3.11 on")
    import tomllib

    root = Path(__file__).resolve().parent.parent
    config = tomllib.loads((root / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(root).parts)
        for init in (root / "uringloop").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    found.add("uringloop._core")  # C sources only: package data, listed on purpose
    assert found <= listed, f"not in pyproject's packages: {sorted(found - listed)}"


def test_installed_package_has_every_module():
    """Run against an installed package (CI), every module of the source tree is there."""
    root = Path(__file__).resolve().parent.parent / "uringloop"
    if root == PKG or not root.is_dir():
        pytest.skip("the tests import the source tree itself (in-place build)")
    missing = [
        str(p.relative_to(root))
        for p in root.rglob("*.py")
        if "__pycache__" not in p.parts and not (PKG / p.relative_to(root)).is_file()
    ]
    assert not missing, f"source modules missing from the installed package: {missing}"
