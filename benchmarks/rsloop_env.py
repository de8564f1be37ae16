#!/usr/bin/env python3
"""rsloop for the side-by-side benchmarks on a host whose glibc is too old for it.

    python benchmarks/rsloop_env.py            # build benchmarks/.rsloop-env/ (downloads)
    python benchmarks/rsloop_env.py --check    # is it there, and does rsloop import in it?
    make rsloop-env PY=/work/venv/bin/python   # the same as the first line

rsloop (Rust, io_uring) ships Linux wheels for ``manylinux_2_39`` only: they
need glibc 2.39, and Debian bookworm has 2.36; its source build needs cargo
and crates.io. This script builds, under the gitignored folder
``benchmarks/.rsloop-env/``, a newer glibc to run benchmark servers with,
without installing anything on the system:

1. From Debian's archive (http://deb.debian.org/debian, suite trixie, glibc
   2.41): the signed ``InRelease`` file (checked with ``gpgv`` against
   ``/usr/share/keyrings/debian-archive-keyring.gpg`` where both exist), the
   ``main/binary-amd64/Packages.xz`` index (its SHA256 checked against
   InRelease), and the packages ``libc6`` and ``libgcc-s1`` (each .deb's
   SHA256 checked against the index), unpacked into ``root/``.
2. From PyPI, through pip: rsloop's ``manylinux_2_39_x86_64`` wheel for the
   running Python (``pip download --only-binary :all: --platform ...``),
   unpacked into ``site/`` (not installed).
3. A check: this Python started through trixie's loader,
   ``root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path
   <this Python's LIBDIR>:<trixie's libs>:<the host's libs> python``, with
   ``site/`` on PYTHONPATH, imports rsloop and runs a coroutine on
   ``rsloop.run``. What it found goes into ``manifest.json``.

The Python's own LIBDIR comes first in --library-path (a pyenv build's
libpython, not Debian's: Debian's libpython 3.11.2 lacks symbols the pyenv
3.11.7 ``_ssl`` needs). Host libraries (libssl, libffi, ...) still load from
the host's folder: they need glibc 2.36 or older, which 2.41 provides.

It is an optional extra of the benchmarks (net_bench.py, loop_bench.py,
subprocess_bench.py use it when rsloop is asked for, does not import
normally, and this folder exists: decisions 799-801). Nothing in the
package or in the default test run needs it or touches the network.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import urllib.request
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
ENV_DIR = os.path.join(HERE, ".rsloop-env")
MIRROR = "http://deb.debian.org/debian"
SUITE = "trixie"
ARCH = "amd64"
PACKAGES = ("libc6", "libgcc-s1")
WHEEL_PLATFORM = "manylinux_2_39_x86_64"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
LIBDIR = os.path.join("root", "usr", "lib", "x86_64-linux-gnu")
LOADER = os.path.join(LIBDIR, "ld-linux-x86-64.so.2")
MANIFEST = "manifest.json"
# what the check runs inside the environment: its libc, rsloop's version and
# build, and one coroutine on rsloop.run
CHECK = (
    "import json, os, rsloop\n"
    "async def main():\n"
    "    return 42\n"
    "assert rsloop.run(main()) == 42\n"
    "print(json.dumps({'glibc': os.confstr('CS_GNU_LIBC_VERSION').split()[-1],\n"
    "    'rsloop': rsloop.__version__, 'build_info': rsloop.build_info()}))\n"
)


def log(msg):
    print(f"rsloop_env: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ parsing


def parse_packages(text):
    """A Debian Packages (or Release) file -> {package name: {field: value}}.
    Stanzas are separated by blank lines; a line starting with white space
    continues the field above it. The first stanza of a name wins."""
    out = {}
    for stanza in text.split("\n\n"):
        fields, last = {}, None
        for line in stanza.splitlines():
            if not line.strip():
                continue
            if line[0] in " \t" and last:
                fields[last] += "\n" + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep:
                continue
            last = key.strip()
            fields[last] = value.strip()
        name = fields.get("Package")
        if name and name not in out:
            out[name] = fields
    return out


def release_sha256(text, path):
    """The SHA256 of `path` (e.g. main/binary-amd64/Packages.xz) listed in an
    InRelease/Release file's SHA256 field, or None."""
    in_sha = False
    for line in text.splitlines():
        if not line.startswith(" "):
            in_sha = line.startswith("SHA256:")
            continue
        parts = line.split()
        if in_sha and len(parts) == 3 and parts[2] == path:
            return parts[0]
    return None


def sha256_of(data_or_path):
    h = hashlib.sha256()
    if isinstance(data_or_path, (bytes, bytearray)):
        h.update(data_or_path)
    else:
        with open(data_or_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def check_sha256(data_or_path, expected, what):
    """Raise ValueError unless the SHA256 is `expected`."""
    got = sha256_of(data_or_path)
    if not expected or got != expected.lower():
        raise ValueError(f"{what}: SHA256 {got}, the index says {expected}")
    return got


def ar_members(blob):
    """The members of an ar archive (a .deb) -> {name: bytes}."""
    if not blob.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    pos, out = 8, {}
    while pos + 60 <= len(blob):
        head = blob[pos : pos + 60]
        name = head[:16].decode().strip().rstrip("/")
        size = int(head[48:58].decode().strip())
        pos += 60
        out[name] = blob[pos : pos + size]
        pos += size + (size & 1)
    return out


def extract_deb(blob, dest):
    """Unpack a .deb's data.tar.{xz,gz} into dest (what dpkg-deb -x does)."""
    members = ar_members(blob)
    data = next((k for k in members if k.startswith("data.tar")), None)
    if data is None:
        raise ValueError(f"no data.tar in the .deb: {sorted(members)}")
    if data.endswith(".zst"):
        if not shutil.which("dpkg-deb"):
            raise ValueError("data.tar.zst needs dpkg-deb")
        with tempfile.NamedTemporaryFile(suffix=".deb") as f:
            f.write(blob)
            f.flush()
            subprocess.run(["dpkg-deb", "-x", f.name, dest], check=True)
        return
    with tarfile.open(fileobj=io.BytesIO(members[data])) as tar:
        tar.extractall(dest, filter="tar" if hasattr(tarfile, "data_filter") else None)


# ------------------------------------------------------------------ using it


def python_libdir(python=sys.executable):
    """The folder of `python`'s libpython (sysconfig LIBDIR)."""
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        return sysconfig.get_config_var("LIBDIR")
    return subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.strip()


def host_libdir():
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    return f"/usr/lib/{multiarch}"


def command_prefix(env_dir, python=sys.executable, pylib=None):
    """The argv that starts `python` under the environment's loader and libc
    (the script and its arguments follow)."""
    env_dir = os.path.abspath(env_dir)
    paths = [pylib or python_libdir(python), os.path.join(env_dir, LIBDIR), host_libdir()]
    return [
        os.path.join(env_dir, LOADER),
        "--library-path",
        os.pathsep.join(p for p in paths if p),
        python,
    ]


def site_dir(env_dir):
    return os.path.join(os.path.abspath(env_dir), "site")


def load(env_dir=ENV_DIR):
    """The environment's manifest (a dict, with 'dir'), or None when it was
    not built (or not to the end)."""
    try:
        with open(os.path.join(env_dir, MANIFEST)) as f:
            man = json.load(f)
    except (OSError, ValueError):
        return None
    if not os.path.exists(os.path.join(env_dir, LOADER)):
        return None
    man["dir"] = os.path.abspath(env_dir)
    return man


def describe(man):
    """One line for a results header: the libc the servers ran with and how."""
    return (
        f"Debian {man.get('suite', SUITE)}'s glibc {man['glibc']} "
        f"(libc6 {man['debs']['libc6']['version']}), started through its loader "
        f"{LOADER.split(os.sep)[-1]} --library-path from "
        f"{os.path.relpath(man['dir'], os.path.dirname(HERE))}/ "
        f"(benchmarks/rsloop_env.py)"
    )


def importable(module, python=sys.executable):
    """Whether `python` imports `module` as it is (no environment)."""
    try:
        r = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def add_option(ap, what="every server"):
    """The --rsloop-env option net_bench.py has, for the scripts that start
    net_bench's servers (kcounts, stallhunt, heapstate; decision 841)."""
    ap.add_argument(
        "--rsloop-env",
        default="auto",
        metavar="auto|off|DIR",
        help=f"run {what} under the rsloop environment's glibc (benchmarks/rsloop_env.py): "
        "auto (default) when rsloop is among the loops, does not import as it is, and "
        "benchmarks/.rsloop-env was built; off: never; DIR: that folder's (decisions 800, 841)",
    )


def choose(spec, wanted, python=sys.executable):
    """The environment's manifest when the benchmark should use it, else None.
    spec: 'off', 'auto' (the default folder, used when rsloop is wanted, does
    not import as it is and the folder was built) or a folder (used when rsloop
    is wanted; an error if it was not built there). wanted: rsloop is among
    the loops."""
    if spec == "off" or not wanted:
        return None
    if spec == "auto":
        man = load(ENV_DIR)
        if man is None or importable("rsloop", python):
            return None
        return man
    man = load(spec)
    if man is None:
        sys.exit(f"no rsloop environment in {spec} (python benchmarks/rsloop_env.py --dir {spec})")
    return man


# ------------------------------------------------------------------ building


def fetch(url, why):
    log(f"downloading {url} ({why})")
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def verify_inrelease(text_bytes, workdir):
    """gpgv the InRelease file against Debian's archive keyring; returns what
    was checked (a note for the manifest)."""
    gpgv = shutil.which("gpgv")
    if not gpgv or not os.path.exists(KEYRING):
        log(f"WARNING: no gpgv or no {KEYRING}: InRelease's signature is not checked")
        return "not checked (no gpgv or keyring)"
    path = os.path.join(workdir, "InRelease")
    with open(path, "wb") as f:
        f.write(text_bytes)
    r = subprocess.run(
        [gpgv, "--keyring", KEYRING, path], capture_output=True, text=True, timeout=60
    )
    if r.returncode != 0:
        raise ValueError(f"InRelease's signature does not verify: {r.stderr.strip()[-500:]}")
    return f"gpgv with {KEYRING}"


def run_check(env_dir, python):
    env = dict(os.environ, PYTHONPATH=site_dir(env_dir))
    r = subprocess.run(
        command_prefix(env_dir, python) + ["-c", CHECK],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if r.returncode != 0:
        raise RuntimeError(f"rsloop does not run in {env_dir}: {r.stderr.strip()[-1500:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def build(env_dir=ENV_DIR, python=sys.executable, version=None, mirror=MIRROR, suite=SUITE):
    env_dir = os.path.abspath(env_dir)
    parent = os.path.dirname(env_dir)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".rsloop-env-", dir=parent)
    try:
        base = f"{mirror}/dists/{suite}"
        inrel = fetch(f"{base}/InRelease", f"the signed index of Debian {suite}")
        signature = verify_inrelease(inrel, work)
        index = f"main/binary-{ARCH}/Packages.xz"
        xz = fetch(f"{base}/{index}", "the package list, for libc6's and libgcc-s1's files")
        check_sha256(xz, release_sha256(inrel.decode(errors="replace"), index), index)
        pkgs = parse_packages(lzma.decompress(xz).decode(errors="replace"))
        debs = {}
        root = os.path.join(work, "root")
        for name in PACKAGES:
            st = pkgs.get(name)
            if st is None:
                raise ValueError(f"{name} is not in {suite}'s {index}")
            blob = fetch(
                f"{mirror}/{st['Filename']}",
                f"{name} {st['Version']}: a glibc new enough for rsloop's wheel",
            )
            check_sha256(blob, st.get("SHA256"), st["Filename"])
            extract_deb(blob, root)
            debs[name] = {"version": st["Version"], "file": st["Filename"], "sha256": st["SHA256"]}
        pyver = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        wheels = os.path.join(work, "wheel")
        spec = f"rsloop=={version}" if version else "rsloop"
        log(f"pip download {spec} for Python {pyver}, {WHEEL_PLATFORM} (the wheel, not installed)")
        subprocess.run(
            [
                python,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary",
                ":all:",
                "--platform",
                WHEEL_PLATFORM,
                "--python-version",
                pyver,
                "--implementation",
                "cp",
                "-d",
                wheels,
                spec,
            ],
            check=True,
            timeout=600,
        )
        whl = [f for f in os.listdir(wheels) if f.endswith(".whl")]
        if len(whl) != 1:
            raise ValueError(f"expected one wheel, got {whl}")
        with zipfile.ZipFile(os.path.join(wheels, whl[0])) as z:
            z.extractall(os.path.join(work, "site"))
        got = run_check(work, python)
        man = {
            "suite": suite,
            "mirror": mirror,
            "inrelease_signature": signature,
            "debs": debs,
            "wheel": {"file": whl[0], "sha256": sha256_of(os.path.join(wheels, whl[0]))},
            "python": pyver,
            "python_libdir": python_libdir(python),
            **got,
        }
        shutil.rmtree(wheels)
        with open(os.path.join(work, MANIFEST), "w") as f:
            json.dump(man, f, indent=1)
        if os.path.exists(env_dir):
            shutil.rmtree(env_dir)
        os.rename(work, env_dir)
        work = None
        man["dir"] = env_dir
        return man
    finally:
        if work:
            shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dir", default=ENV_DIR, help="the folder (benchmarks/.rsloop-env)")
    ap.add_argument("--python", default=sys.executable, help="the benchmarks' Python")
    ap.add_argument("--rsloop-version", default=None, help="a version (default: the newest)")
    ap.add_argument("--check", action="store_true", help="check the folder, download nothing")
    args = ap.parse_args(argv)
    if args.check:
        man = load(args.dir)
        if man is None:
            print(f"no rsloop environment in {args.dir}")
            return 1
        got = run_check(args.dir, args.python)
        print(f"rsloop {got['rsloop']} runs on glibc {got['glibc']}: {describe(man)}")
        return 0
    man = build(args.dir, args.python, args.rsloop_version)
    print(f"rsloop {man['rsloop']} runs on glibc {man['glibc']}: {describe(man)}")
    print(f"build_info: {json.dumps(man['build_info'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
