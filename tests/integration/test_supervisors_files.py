"""
The files in etc/ for supervisors (systemd units, the supervisord program,
the logrotate snippet), each used the way an operator would: parsed for the
settings the contract needs, checked by the supervisor's own tools when they
are installed, and run with the real daemon.  Tools that are missing make
their tests skip.
"""

import configparser
import getpass
import grp
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import (
    REPO,
    _cleanEnv,
    _probe,
    requireCommand,
    runCurl,
    waitFor,
)
from tests.integration.origin import HELLO as HELLO_BODY, freePort

ETC = REPO / "etc"
SERVICE = ETC / "systemd" / "proxyd.service"
SOCKET = ETC / "systemd" / "proxyd.socket"
SOCKET_TOML = ETC / "systemd" / "proxyd-socket.toml"
SUPERVISORD = ETC / "supervisord" / "proxyd.conf"
LOGROTATE = ETC / "logrotate.d" / "proxyd"

# --drain-timeout's default: what a supervisor must wait for after SIGTERM.
DRAIN_TIMEOUT = 30
INSTALLED_TWISTD = "/opt/proxyd/venv/bin/twistd"


def _env():
    """
    The harness's clean environment, without what a systemd running these
    tests would pass down: the daemons here must not notify it.
    """
    env = _cleanEnv()
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
                 "LISTEN_FDNAMES"):
        env.pop(name, None)
    return env


def readUnit(path):
    """A systemd unit (or supervisord file) as configparser reads it, keys kept as written."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(Path(path).read_text("utf-8"), source=str(path))
    return parser


def seconds(value):
    """C{35}, C{35s}, C{1min 5s}: a systemd time span, as far as these files use it."""
    total = 0
    for number, unit in re.findall(r"(\d+)\s*(min|s|)", value):
        total += int(number) * (60 if unit == "min" else 1)
    return total


def execStart(unit):
    return shlex.split(unit["Service"]["ExecStart"])


def _retargetService(text, twistd):
    """The service file with ExecStart pointing at the test venv's twistd."""
    assert INSTALLED_TWISTD in text
    return text.replace(INSTALLED_TWISTD, str(twistd))


# ---------------------------------------------------------------------------
# systemd


def test_serviceUnit():
    """
    proxyd.service: Type=notify, foreground twistd without a pid file,
    reload by SIGHUP, restart on failure, a dedicated user, the CA and log
    directories, the hardening, and a stop timeout above the drain.
    """
    unit = readUnit(SERVICE)
    service = unit["Service"]
    assert service["Type"] == "notify"
    argv = execStart(unit)
    assert argv[:4] == [INSTALLED_TWISTD, "-n", "--pidfile=", "proxyd"], argv
    assert argv[argv.index("--config") + 1] == "/etc/proxyd/proxyd.toml"
    assert service["ExecReload"].split() == ["/bin/kill", "-HUP", "$MAINPID"]
    assert service["Restart"] == "on-failure"
    assert service["User"] == "proxyd" and service["Group"] == "proxyd"
    # The CA lives in PROXYD_HOME, which StateDirectory= makes writable.
    assert service["Environment"] == "PROXYD_HOME=/var/lib/proxyd"
    assert service["StateDirectory"] == "proxyd"
    assert service["LogsDirectory"] == "proxyd"
    for key, value in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectControlGroups", "yes"),
        ("LockPersonality", "yes"),
        ("KillMode", "mixed"),
    ]:
        assert service.get(key) == value, (key, service.get(key))
    assert set(service["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # No capability unless a low port needs one (the commented lines).
    assert service["CapabilityBoundingSet"] == ""
    assert "AmbientCapabilities" not in service
    text = SERVICE.read_text("utf-8")
    assert "#AmbientCapabilities=CAP_NET_BIND_SERVICE" in text
    assert "#CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in text
    assert "#WatchdogSec=" in text
    # W^X would break cffi callbacks in pyOpenSSL; left out on purpose.
    assert "MemoryDenyWriteExecute" not in service
    # SIGTERM drains for up to --drain-timeout; systemd must wait longer.
    assert DRAIN_TIMEOUT < seconds(service["TimeoutStopSec"]) <= DRAIN_TIMEOUT + 15
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_socketUnit():
    """
    proxyd.socket: the loopback port of proxyd's default listener, handed
    to proxyd.service (one process for all connections), in sockets.target.
    """
    unit = readUnit(SOCKET)
    sock = unit["Socket"]
    assert sock["ListenStream"] == "127.0.0.1:8080"
    assert sock["Service"] == SERVICE.name
    assert sock["NoDelay"] == "true"
    assert sock.get("Accept", "no") == "no"
    # No FileDescriptorName=: the name systemd passes is the unit's name.
    assert "FileDescriptorName" not in sock
    assert unit["Install"]["WantedBy"] == "sockets.target"
    # The service and the example config say how to use it.
    assert "systemd:domain=INET:index=0" in SERVICE.read_text("utf-8")
    assert 'listen = ["systemd:domain=INET:index=0"]' in SOCKET_TOML.read_text("utf-8")


def _verify(analyze, directory):
    """systemd-analyze verify on both units in C{directory}: (returncode, complaints)."""
    r = subprocess.run(
        [analyze, "verify", "proxyd.service", "proxyd.socket"],
        cwd=str(directory), capture_output=True, text=True, timeout=60,
        env=dict(_env(), SYSTEMD_LOG_COLOR="0", PAGER="cat"),
    )
    # Warnings about our files name them with a line number; a missing
    # binary or an unknown key is only a warning (exit status 0).
    complaints = [
        line for line in (r.stdout + r.stderr).splitlines()
        if "proxyd.service" in line or "proxyd.socket" in line
    ]
    return r.returncode, complaints


def test_systemdAnalyzeVerify(twistd, tmp_path):
    """
    systemd-analyze verify accepts both units without a warning, with
    ExecStart pointing at the test install (verify checks that the binary
    exists).  A unit with a mistake is caught, so the check can fail.
    """
    analyze = requireCommand("systemd-analyze")
    good = tmp_path / "good"
    good.mkdir()
    (good / "proxyd.service").write_text(_retargetService(SERVICE.read_text("utf-8"), twistd))
    (good / "proxyd.socket").write_text(SOCKET.read_text("utf-8"))
    returncode, complaints = _verify(analyze, good)
    assert returncode == 0 and complaints == [], complaints

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "proxyd.service").write_text(
        (good / "proxyd.service").read_text().replace("NoNewPrivileges=", "NoNewPrivilege="))
    (bad / "proxyd.socket").write_text(SOCKET.read_text("utf-8"))
    returncode, complaints = _verify(analyze, bad)
    assert any("NoNewPrivilege" in line for line in complaints), complaints


def test_systemdAnalyzeSecurity(twistd, tmp_path):
    """
    systemd-analyze security rates the service's exposure "OK" or better
    (at most 4.0 of 10; a bare service is 9.6 "UNSAFE").
    """
    analyze = requireCommand("systemd-analyze")
    unit = tmp_path / "proxyd.service"
    unit.write_text(_retargetService(SERVICE.read_text("utf-8"), twistd))
    r = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=40", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60,
        env=dict(_env(), SYSTEMD_LOG_COLOR="0", SYSTEMD_COLORS="0"),
    )
    if "--offline" in r.stderr or "--threshold" in r.stderr:
        pytest.skip("systemd-analyze is too old for security --offline --threshold")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr


def _stopProcess(proc, timeout=15):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def test_socketActivation(twistd, origin, curl, tmp_path):
    """
    The service's own ExecStart, with the socket config, under
    systemd-socket-activate listening on the socket unit's address (on a
    free port): the port accepts before proxyd runs, the first request
    (which is what starts proxyd) is answered through the passed socket,
    and SIGTERM ends it with status 0.

    systemd-socket-activate is given --fdname=proxyd.socket because systemd
    always sets LISTEN_FDNAMES (to the socket unit's name by default) and
    Twisted's systemd: endpoint ignores the sockets without it.
    """
    activate = requireCommand("systemd-socket-activate")
    host, _, port = readUnit(SOCKET)["Socket"]["ListenStream"].rpartition(":")
    assert port.isdigit() and host == "127.0.0.1"
    port = freePort(host)
    argv = execStart(readUnit(SERVICE))
    argv[0] = str(twistd)
    argv[argv.index("--config") + 1] = str(SOCKET_TOML)
    # A systemd: listener counts as public; the origin is on loopback.
    argv.append("--allow-private")
    env = _env()
    env["PROXYD_HOME"] = str(tmp_path / "home")
    with open(tmp_path / "out.log", "wb") as out:
        proc = subprocess.Popen(
            [activate, "--listen=%s:%d" % (host, port), "--fdname=" + SOCKET.name] + argv,
            cwd="/", env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        waitFor(lambda: proc.poll() is not None or b"Listening on" in (tmp_path / "out.log").read_bytes(),
                15, message="systemd-socket-activate to listen")
        assert proc.poll() is None, (tmp_path / "out.log").read_text()
        r = runCurl(curl, ["-x", "http://%s:%d" % (host, port), origin.url("/hello")], timeout=30)
        log = (tmp_path / "out.log").read_text("utf-8", "replace")
        assert r.returncode == 0 and r.stdout == HELLO_BODY, (r, log)
        # twistd replaced systemd-socket-activate in the same process.
        assert "twistd" in Path("/proc/%d/cmdline" % proc.pid).read_bytes().decode()
        r = runCurl(curl, ["http://%s:%d/healthz" % (host, port)])
        assert r.stdout.strip() == b"ok", r
    finally:
        status = _stopProcess(proc)
    assert status == 0, (tmp_path / "out.log").read_text("utf-8", "replace")


def test_notifyReadyStopping(proxyd, tmp_path):
    """
    With Type=notify, systemd learns from NOTIFY_SOCKET that proxyd is
    listening (READY=1) and that it is stopping (STOPPING=1), in that order.
    """
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    address = str(tmp_path / "notify")
    receiver.bind(address)
    receiver.setblocking(False)
    seen = []

    def received(wanted):
        while True:
            try:
                seen.append(receiver.recv(4096).decode().split("\n"))
            except BlockingIOError:
                return any(wanted in message for message in seen)

    try:
        d = proxyd(env={"NOTIFY_SOCKET": address})
        waitFor(lambda: received("READY=1"), 10, message="READY=1")
        assert d.stop() == 0
        waitFor(lambda: received("STOPPING=1"), 5, message="STOPPING=1")
        firsts = [m[0] for m in seen if m[0] in ("READY=1", "STOPPING=1")]
        assert firsts == ["READY=1", "STOPPING=1"], seen
    finally:
        receiver.close()


# ---------------------------------------------------------------------------
# supervisord


def _program():
    return readUnit(SUPERVISORD)["program:proxyd"]


def test_supervisordProgram():
    """
    [program:proxyd] runs the same command as the systemd service, stops it
    with SIGTERM and waits longer than the drain before SIGKILL (as long as
    systemd does), restarts it only after a crash, and stops the whole
    process group.
    """
    program = _program()
    assert shlex.split(program["command"]) == execStart(readUnit(SERVICE))
    assert program["stopsignal"] == "TERM"
    stopwait = int(program["stopwaitsecs"])
    assert DRAIN_TIMEOUT < stopwait <= DRAIN_TIMEOUT + 15
    assert stopwait == seconds(readUnit(SERVICE)["Service"]["TimeoutStopSec"])
    assert program["autorestart"] in ("unexpected", "true")
    assert "0" in program["exitcodes"].split(",")
    assert int(program["startsecs"]) >= 1
    assert program["redirect_stderr"] == "true"
    assert program["stdout_logfile"].startswith("/")
    assert program["stopasgroup"] == "true" and program["killasgroup"] == "true"
    assert 'PROXYD_HOME="/var/lib/proxyd"' in program["environment"]


def _supervisorCommand(venv, name):
    """supervisord from the daemon's venv, the test runner's (the [test] extras bring it), or PATH."""
    for directory in (venv / "bin", Path(sys.executable).parent):
        path = directory / name
        if path.exists():
            return str(path)
    return requireCommand(name)


class _Supervisor:
    def __init__(self, venv, directory, port):
        self.supervisord = _supervisorCommand(venv, "supervisord")
        self.supervisorctl = _supervisorCommand(venv, "supervisorctl")
        self.directory = directory
        self.conf = directory / "supervisord.conf"
        self.log = directory / "supervisord.log"
        self.port = port
        self.proc = None

    def write(self, twistd, config):
        """The shipped program, run from the test install with a test config."""
        parser = configparser.ConfigParser(interpolation=None)
        parser.optionxform = str
        parser.read_string(SUPERVISORD.read_text("utf-8"))
        program = parser["program:proxyd"]
        argv = shlex.split(program["command"])
        argv[0] = str(twistd)
        argv[argv.index("--config") + 1] = str(config)
        program["command"] = shlex.join(argv)
        program["user"] = getpass.getuser()
        program["stdout_logfile"] = str(self.directory / "proxyd.log")
        program["environment"] = 'PROXYD_HOME="%s",PYTHONUNBUFFERED="1"' % (self.directory / "home",)
        sock = self.directory / "supervisor.sock"
        parser["supervisord"] = {
            "nodaemon": "true", "logfile": str(self.log), "pidfile": str(self.directory / "sd.pid"),
            "childlogdir": str(self.directory), "user": getpass.getuser(),
        }
        parser["unix_http_server"] = {"file": str(sock)}
        parser["supervisorctl"] = {"serverurl": "unix://%s" % sock}
        parser["rpcinterface:supervisor"] = {
            "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"}
        with open(self.conf, "w") as f:
            parser.write(f)

    def start(self):
        self.proc = subprocess.Popen(
            [self.supervisord, "-c", str(self.conf)], cwd=str(self.directory), env=_env(),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def ctl(self, *args):
        return subprocess.run([self.supervisorctl, "-c", str(self.conf)] + list(args),
                              capture_output=True, text=True, timeout=60, env=_env())

    def running(self):
        """The pid of a RUNNING proxyd, else None."""
        out = self.ctl("status", "proxyd").stdout.split()
        if len(out) >= 4 and out[1] == "RUNNING" and out[2] == "pid":
            return int(out[3].rstrip(","))
        return None

    def stop(self):
        if self.proc is not None:
            self.ctl("shutdown")
            _stopProcess(self.proc)

    def logs(self):
        return "\n".join(
            p.read_text("utf-8", "replace") for p in (self.log, self.directory / "proxyd.log") if p.exists())


def test_supervisordRuns(venv, twistd, origin, curl, tmp_path):
    """
    The shipped program under a real supervisord (when the supervisor
    package is installed): it starts and serves, comes back after a crash
    (SIGKILL) with a new pid, and "supervisorctl stop" ends it with an
    expected exit (status 0).
    """
    port = freePort()
    supervisor = _Supervisor(venv, tmp_path, port)
    config = tmp_path / "proxyd.toml"
    config.write_text('listen = ["tcp:%d:interface=127.0.0.1"]\n' % port)
    supervisor.write(twistd, config)
    supervisor.start()
    try:
        first = waitFor(supervisor.running, 20, message="supervisord to report proxyd RUNNING")
        r = runCurl(curl, ["-x", "http://127.0.0.1:%d" % port, origin.url("/hello")])
        assert r.returncode == 0 and r.stdout == HELLO_BODY, (r, supervisor.logs())

        os.kill(first, signal.SIGKILL)
        second = waitFor(lambda: (supervisor.running() or first) != first and supervisor.running(),
                         20, message="supervisord to restart proxyd")
        assert second != first
        waitFor(lambda: _probe(("127.0.0.1", port)), 10, message="the restarted proxyd to listen")

        r = supervisor.ctl("stop", "proxyd")
        assert "stopped" in r.stdout, (r, supervisor.logs())
        log = waitFor(lambda: "stopped: proxyd" in supervisor.log.read_text() and supervisor.log.read_text(),
                      10, message="supervisord to log the stop")
        assert "stopped: proxyd (exit status 0)" in log, supervisor.logs()
        assert not _probe(("127.0.0.1", port))
    finally:
        supervisor.stop()


# ---------------------------------------------------------------------------
# logrotate


def _logrotateFor(directory):
    """
    The shipped snippet for a log directory of the test's and the current
    user; its postrotate script is kept as shipped.
    """
    text = LOGROTATE.read_text("utf-8")
    user, group = getpass.getuser(), grp.getgrgid(os.getgid()).gr_name
    assert "/var/log/proxyd/*.log {" in text
    assert "su proxyd proxyd" in text and "create 0640 proxyd proxyd" in text
    text = text.replace("/var/log/proxyd/", str(directory) + "/")
    text = text.replace("su proxyd proxyd", "su %s %s" % (user, group))
    text = text.replace("create 0640 proxyd proxyd", "create 0640 %s %s" % (user, group))
    return text


def _fakeSystemctl(directory, pid, calls):
    """A systemctl that sends the signal asked for to C{pid}, as systemd would to proxyd.service."""
    path = directory / "systemctl"
    path.write_text(
        "#!/bin/sh\n"
        'echo "$*" >> %s\n'
        'case "$*" in\n'
        '  "is-active --quiet proxyd.service") exit 0 ;;\n'
        '  "kill -s HUP proxyd.service") exec kill -HUP %d ;;\n'
        "esac\n"
        "exit 1\n" % (shlex.quote(str(calls)), pid))
    path.chmod(0o755)


def test_logrotateSnippet():
    """
    Daily, 14 kept, compressed a rotation late, and SIGHUP afterwards via
    systemd, with the supervisord and pid-file ways in comments.
    """
    text = LOGROTATE.read_text("utf-8")
    words = [line.split() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    directives = {w[0]: w[1:] for w in words}
    for key in ("daily", "compress", "delaycompress", "missingok", "notifempty", "sharedscripts"):
        assert key in directives, key
    assert directives["rotate"] == ["14"]
    assert directives["create"] == ["0640", "proxyd", "proxyd"]
    assert "systemctl kill -s HUP proxyd.service" in text
    assert "#supervisorctl signal HUP proxyd" in text
    assert 'kill -HUP "$(cat /run/proxyd.pid)"' in text


def test_logrotate(proxyd, origin, curl, tmp_path):
    """
    The snippet (paths and user moved to the test's) passes logrotate -d,
    then rotates a live proxyd's access log for real: the old lines stay in
    access.log.1 (uncompressed until next time), the shipped postrotate
    sends SIGHUP to proxyd.service (a stand-in systemctl sends it to the
    daemon), and the next request goes to a new access.log.
    """
    logrotate = requireCommand("logrotate")
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o755)
    access = logs / "access.log"
    d = proxyd("--access-log", str(access))
    url = "http://127.0.0.1:%d" % d.port
    assert runCurl(curl, ["-x", url, origin.url("/hello?before")]).returncode == 0
    waitFor(lambda: access.exists() and "/hello?before" in access.read_text(), 10,
            message="the first access log line")

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    calls = tmp_path / "systemctl.calls"
    _fakeSystemctl(bin_, d.pid, calls)
    conf = tmp_path / "logrotate.conf"
    conf.write_text(_logrotateFor(logs))
    conf.chmod(0o644)
    env = _env()
    env["PATH"] = "%s:%s" % (bin_, env.get("PATH", "/usr/bin:/bin"))
    state = tmp_path / "logrotate.state"

    dry = subprocess.run([logrotate, "-d", "-s", str(state), str(conf)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "error" not in (dry.stdout + dry.stderr).lower(), dry.stdout + dry.stderr
    assert not calls.exists() and not (logs / "access.log.1").exists()

    real = subprocess.run([logrotate, "-f", "-s", str(state), str(conf)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert real.returncode == 0, real.stdout + real.stderr
    assert calls.read_text().splitlines() == ["is-active --quiet proxyd.service",
                                              "kill -s HUP proxyd.service"]
    rotated = logs / "access.log.1"
    assert "/hello?before" in rotated.read_text()
    assert (access.stat().st_mode & 0o777) == 0o640

    def reopened():
        for fd in os.listdir("/proc/%d/fd" % d.pid):
            try:
                if os.readlink("/proc/%d/fd/%s" % (d.pid, fd)) == str(access):
                    return True
            except OSError:
                pass
        return False

    waitFor(reopened, 10, message="proxyd to reopen access.log after SIGHUP")
    assert runCurl(curl, ["-x", url, origin.url("/hello?after")]).returncode == 0
    waitFor(lambda: "/hello?after" in access.read_text(), 10, message="a line in the new access.log")
    assert "/hello?after" not in rotated.read_text()
    assert "/hello?before" not in access.read_text()
    assert d.running()
