"""Processes under test: start them pinned to CPUs, wait until they serve, stop them, and read
their CPU time and memory from /proc (summed over a process and its descendants, so that
nginx's workers count along with its master)."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpus, argv):
    """`argv` run by taskset on the CPU list `cpus` (such as "1" or "0-1")."""
    return ["taskset", "-c", cpus, *argv]


class Process:
    """A child process whose output goes to a log file, stopped by `stop()`."""

    def __init__(self, name, argv, log_dir, env=None, cwd=None):
        self.name = name
        self.log_path = Path(log_dir) / f"{name}.log"
        self._log = open(self.log_path, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env, cwd=cwd
        )

    @property
    def pid(self):
        return self.popen.pid

    def pids(self):
        """This process and all its descendants."""
        return descendants(self.pid)

    def log_tail(self, lines=20):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self):
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")

    def wait_for_port(self, port, timeout=15.0):
        """Waits until something accepts connections on 127.0.0.1:`port`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on port {port} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, grace=2.0):
        """SIGTERM, then SIGKILL after `grace` seconds (some peers drain for a long time)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                # Kill what is left of the tree: nginx's workers outlive a killed master.
                for pid in reversed(self.pids()):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                self.popen.wait()
        self._log.close()


def descendants(pid):
    """`pid` and every process below it, parents first. Reads each process's parent from
    /proc/<pid>/stat: /proc/<pid>/task/<tid>/children needs CONFIG_PROC_CHILDREN, which not
    every kernel has (this machine's has not)."""
    children = {}
    for entry in _list_dir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found = [pid]
    index = 0
    while index < len(found):
        found.extend(sorted(children.get(found[index], [])))
        index += 1
    return found


def _list_dir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def cpu_seconds(pids):
    """User plus system CPU time of `pids`, in seconds."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        # The command name, in parentheses, may hold spaces: count fields after its end.
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime and stime, fields 14 and 15 of stat
    return total / CLOCK_TICKS


def memory_kib(pids, field):
    """The sum of a /proc/<pid>/status field (VmRSS, VmHWM) over `pids`, in KiB."""
    total = 0
    for pid in pids:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith(field + ":"):
                total += int(line.split()[1])
    return total


def reset_peak_memory(pids):
    """Resets VmHWM to the current VmRSS for `pids` (writing 5 to clear_refs, Linux 4.0 and
    later), so that a later read gives the peak of what ran in between. Returns whether it
    worked for every process."""
    done = True
    for pid in pids:
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            done = False
    return done


def threads(pids):
    """How many threads `pids` have in all."""
    return memory_kib(pids, "Threads")


def cpu_busy():
    """{cpu number: (busy seconds, all seconds)} since boot, from /proc/stat: busy is every
    state but idle and iowait. The difference of two readings says how busy each CPU was."""
    found = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(it) for it in fields[:8]]  # user nice system idle iowait irq softirq steal
        found[int(name[3:])] = ((sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS, sum(ticks) / CLOCK_TICKS)
    return found


def loadavg():
    """The one-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])
