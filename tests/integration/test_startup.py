"""
Start-up of the installed daemon: the twistd plugin is found, bad
configuration is refused with one line naming the option, the TOML config
file works and the command line wins over it, SIGTERM exits 0.
"""

import socket

import pytest
import requests

from tests.integration.conftest import tcpListener
from tests.integration.origin import RawConnection, connectTunnel, freePort


def test_helpListsProxyd(runTwistd):
    """`twistd --help` run from / lists the proxyd plugin."""
    r = runTwistd(["--help"])
    assert not r.timedOut, r
    assert r.returncode == 0, r
    assert any(line.split()[:1] == ["proxyd"] for line in r.stdout.splitlines()), r


def test_proxydHelp(runTwistd):
    """`twistd proxyd --help` shows proxyd's own options and exits 0."""
    r = runTwistd(["proxyd", "--help"])
    assert not r.timedOut, r
    assert r.returncode == 0, r
    for option in ("--mode", "--listen", "--config", "--connect-ports", "--proxy-auth"):
        assert option in r.stdout, (option, r)


def test_runsFromRootAndAnswersHealthz(proxyd):
    """The installed daemon started from / serves its own /healthz."""
    d = proxyd()
    r = requests.get(d.url + "/healthz", timeout=10)
    assert r.status_code == 200
    assert r.text.strip() == "ok"


def _badConfig(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


BAD_VALUES = [
    (["--mode", "bogus"], "--mode"),
    (["--listen", "tcp:notaport"], "--listen"),
    (["--listen", "nosuchendpoint:1234"], "--listen"),
    (["--allow", "10.0.0.0/33"], "--allow"),
    (["--allow", "not-a-network"], "--allow"),
    (["--proxy-auth", "no-colon-here"], "--proxy-auth"),
    (["--proxy-auth-file", "/nonexistent/proxyd-users"], "--proxy-auth-file"),
    (["--proxy-auth-file", "/"], "--proxy-auth-file"),
    (["--connect-ports", "70000"], "--connect-ports"),
    (["--connect-ports", "a-b"], "--connect-ports"),
    (["--connect-ports", "0"], "--connect-ports"),
    (["--connect-timeout", "-1"], "--connect-timeout"),
    (["--idle-timeout", "-5"], "--idle-timeout"),
    (["--header-timeout", "soon"], "--header-timeout"),
    (["--max-connections", "-3"], "--max-connections"),
    (["--max-header-size", "lots"], "--max-header-size"),
    (["--log-format", "xml"], "--log-format"),
    (["--config", "/nonexistent/proxyd.toml"], "--config"),
    (["--drain-timeout", "0"], "--drain-timeout"),
    (["--drain-timeout", "later"], "--drain-timeout"),
    (["--metrics", "nosuchendpoint:9100"], "--metrics"),
    (["--metrics", "tcp:notaport"], "--metrics"),
    (["--tls-min", "1.3"], "--tls-min"),
    (["--upstream", "http://127.0.0.1:1"], "--upstream"),
]


def _assertOneLine(r, option):
    assert not r.timedOut, "daemon started instead of refusing: %r" % (r,)
    assert r.returncode not in (0, None), r
    assert "Traceback" not in r.stdout + r.stderr, r
    assert len(r.stderrLines) == 1, "expected one stderr line, got %r" % (r,)
    assert option in r.stderrLines[0], r


@pytest.mark.parametrize("args,option", BAD_VALUES, ids=[" ".join(a) for a, _ in BAD_VALUES])
def test_badValueRefusedInOneLine(runTwistd, args, option):
    """Each bad value: non-zero exit, one stderr line naming the option, no traceback."""
    desc, probe = tcpListener()
    argv = ["-n", "--pidfile=", "proxyd"]
    if option != "--listen":
        argv += ["--listen", desc]
    r = runTwistd(argv + args, probe=probe)
    _assertOneLine(r, option)


def test_tomlSyntaxErrorRefused(runTwistd, tmp_path):
    """A TOML syntax error in --config is refused in one line naming --config."""
    path = _badConfig(tmp_path, "bad.toml", 'mode = "forward"\nlisten = [\n')
    desc, probe = tcpListener()
    r = runTwistd(["-n", "--pidfile=", "proxyd", "--listen", desc, "--config", path], probe=probe)
    _assertOneLine(r, "--config")


def test_tomlUnknownKeyRefused(runTwistd, tmp_path):
    """An unknown key in the TOML file is refused in one line naming it."""
    path = _badConfig(tmp_path, "unknown.toml", 'mode = "forward"\nfrobnicate = 3\n')
    desc, probe = tcpListener()
    r = runTwistd(["-n", "--pidfile=", "proxyd", "--listen", desc, "--config", path], probe=probe)
    assert not r.timedOut, r
    assert r.returncode not in (0, None), r
    assert "Traceback" not in r.stdout + r.stderr, r
    assert len(r.stderrLines) == 1, r
    assert "frobnicate" in r.stderrLines[0], r


def test_tomlBadValueRefused(runTwistd, tmp_path):
    """A bad value in the TOML file is refused in one line naming the option."""
    path = _badConfig(tmp_path, "badvalue.toml", 'connect-timeout = -4\n')
    desc, probe = tcpListener()
    r = runTwistd(["-n", "--pidfile=", "proxyd", "--listen", desc, "--config", path], probe=probe)
    _assertOneLine(r, "connect-timeout")


def test_portInUseRefused(runTwistd):
    """A --listen port already taken gives one line naming --listen, exit non-zero."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(5)
        port = s.getsockname()[1]
        r = runTwistd(["-n", "--pidfile=", "proxyd", "--listen",
                       "tcp:%d:interface=127.0.0.1" % port])
    _assertOneLine(r, "--listen")


def test_configFileValuesApply(proxyd, tmp_path, tunnelTarget):
    """--config TOML values are used: its listen address and its allow list."""
    port = freePort()
    cfg = tmp_path / "proxyd.toml"
    cfg.write_text(
        'mode = "forward"\n'
        'listen = ["tcp:%d:interface=127.0.0.1"]\n'
        'connect-ports = "%d"\n'
        'header-timeout = 7\n' % (port, tunnelTarget.port))
    d = proxyd("--config", str(cfg), noListen=True, probes=[("127.0.0.1", port)])
    conn, resp = connectTunnel(("127.0.0.1", port), tunnelTarget.authority)
    with conn:
        assert resp.status == 200, resp
    r = requests.get("http://127.0.0.1:%d/healthz" % port, timeout=10)
    assert r.text.strip() == "ok"
    assert d.running()


def test_commandLineWinsOverConfig(proxyd, tmp_path, tunnelTarget):
    """A value on the command line overrides the same option in the TOML file."""
    cfg = tmp_path / "proxyd.toml"
    cfg.write_text('connect-ports = "1"\nallow = ["10.0.0.0/8"]\n')
    d = proxyd("--config", str(cfg), "--connect-ports", str(tunnelTarget.port),
               "--allow", "127.0.0.0/8")
    conn, resp = connectTunnel(d.address, tunnelTarget.authority)
    with conn:
        assert resp.status == 200, resp


def test_configFileAllowApplies(proxyd, tmp_path, origin):
    """allow from the TOML file is enforced when the command line does not set it."""
    cfg = tmp_path / "proxyd.toml"
    cfg.write_text('allow = ["10.0.0.0/8"]\n')
    d = proxyd("--config", str(cfg))
    r = requests.get(origin.url("/hello"), proxies=d.proxies, timeout=10)
    assert r.status_code == 403


def test_sigtermExitsZero(proxyd):
    """SIGTERM on an idle daemon: it stops promptly with exit status 0."""
    d = proxyd()
    with RawConnection(d.address) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: proxyd\r\nConnection: close\r\n\r\n")
        assert c.readResponse().status == 200
    assert d.stop(timeout=10) == 0, d.logText()


def test_noTracebackAtStartup(proxyd):
    """A normal start logs no traceback."""
    d = proxyd()
    requests.get(d.url + "/", timeout=10)
    assert "Traceback" not in d.logText()
