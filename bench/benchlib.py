"""
What bench/run.py and bench/mitm.py share: bounded subprocesses, the
processes a bench starts (each in its own group, stopped at exit), port
waits, RSS and CPU of a process tree, Debian packages and venvs.

Set LABEL to name the bench in messages.
"""

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

LABEL = "bench"
LOOPBACK = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[{LABEL} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Procs:
    """Every long-running process the bench starts; stopped at exit."""

    def __init__(self):
        self.procs = []   # (name, Popen)

    def start(self, name, argv, cpu=None, cwd=None, env=None, logfile=None):
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu)] + list(argv)
        log(f"start {name}: {' '.join(shlex.quote(str(a)) for a in argv)}")
        out = open(logfile, "ab") if logfile else subprocess.DEVNULL
        try:
            p = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            if logfile:
                out.close()
        self.procs.append((name, p))
        return p

    def stop(self, p, timeout=10.0):
        """SIGTERM the process group we created for p, SIGKILL after timeout."""
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # the group may still hold children (proxy.py workers, nginx workers)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            log(f"pid {p.pid} did not exit after SIGKILL")
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def stop_all(self):
        for name, p in list(reversed(self.procs)):
            log(f"stop {name} (pid {p.pid})")
            self.stop(p, timeout=5.0)


def run(argv, timeout, check=True, cpu=None, env=None, cwd=None, quiet=False, input=None):
    """Run a short command, bounded in time."""
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu)] + list(argv)
    argv = [str(a) for a in argv]
    if not quiet:
        log("run: " + " ".join(shlex.quote(a) for a in argv))
    p = subprocess.run(argv, stdin=None if input is not None else subprocess.DEVNULL, input=input,
                       capture_output=True, timeout=timeout, env=env, cwd=cwd)
    if check and p.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
    return p


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def wait_port(port, proc=None, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((LOOPBACK, port), timeout=1):
                return True
        except OSError:
            time.sleep(0.1)
    return False


def _children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_pids(pid):
    kids = _children_map()
    out, todo = [], [pid]
    while todo and len(out) < 10000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def rss_kib(pid):
    """VmRSS of pid and all its descendants, KiB (shared pages counted per process)."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            pass
    return total


def cpu_seconds(pid):
    """user+system CPU time of pid and its descendants, seconds."""
    total = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class RssSampler:
    def __init__(self, pid, interval=0.1):
        self.pid, self.interval = pid, interval
        self.samples = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        t0 = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - t0 < 3600:
            self.samples.append(rss_kib(self.pid))
            self._stop.wait(self.interval)

    def __enter__(self):
        self.before = rss_kib(self.pid) if self.pid else 0
        if self.pid:
            self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self.pid:
            self._t.join(5)
            self.after = rss_kib(self.pid)
        else:
            self.after = 0

    def result(self):
        if not self.pid:
            return None
        peak = max(self.samples + [self.before, self.after])
        return {"before_kib": self.before, "peak_kib": peak, "after_kib": self.after,
                "growth_kib": peak - self.before, "samples": len(self.samples)}


def ensure_debian(binaries, no_install, packages):
    missing = sorted({packages[b] for b in binaries if not shutil.which(b)})
    if not missing:
        return
    if no_install:
        raise SystemExit(f"{LABEL}: missing Debian packages {missing} and --no-install given")
    if os.geteuid() != 0:
        raise SystemExit(f"{LABEL}: need root to apt-get install {missing}")
    # A package's postinst must not start the system's own squid/nginx/tinyproxy
    # (ports 3128/80/8888, system configs): forbid service starts while installing.
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = False
    if not policy.exists():
        policy.write_text(f"#!/bin/sh\n# temporary, written by proxyd {LABEL}\nexit 101\n")
        policy.chmod(0o755)
        made_policy = True
    try:
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        run(["apt-get", "update", "-q"], timeout=600, env=env)
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends"] + missing, timeout=1200, env=env)
    finally:
        if made_policy:
            policy.unlink()
    still = [b for b in binaries if not shutil.which(b)]
    if still:
        raise SystemExit(f"bench: still missing after apt-get install: {still}")


def venv(work, name, python, packages, upgrade=False):
    """WORK/venv-NAME with PACKAGES pip-installed once (marker file)."""
    d = work / f"venv-{name}"
    marker = d / ".bench-installed"
    want = " ".join(packages)
    if marker.exists() and marker.read_text() == want and not upgrade:
        return d
    if not (d / "bin" / "python").exists():
        run([python, "-m", "venv", d], timeout=300)
    run([d / "bin" / "pip", "install", "-q", "--disable-pip-version-check", "--upgrade", "pip"],
        timeout=600, check=False)
    run([d / "bin" / "pip", "install", "-q", "--disable-pip-version-check"]
        + (["--upgrade"] if upgrade else []) + list(packages), timeout=1800)
    marker.write_text(want)
    return d


def pip_version(d, dist):
    p = run([d / "bin" / "python", "-c",
             f"import importlib.metadata as m; print(m.version({dist!r}))"], timeout=60, check=False,
            quiet=True)
    return p.stdout.decode().strip() or None


def deb_version(pkg):
    p = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True, timeout=30)
    return p.stdout.decode().strip() or None
