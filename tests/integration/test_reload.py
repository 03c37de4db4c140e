"""
SIGHUP re-reads the --config file through the real daemon: policy and
plugin settings change without dropping open connections; a file with a
bad value changes nothing and is one log line; what needs a restart says so
in one line.
"""

import signal

import requests

from tests.integration.origin import RawConnection
from tests.polling import observe, waitFor


def _session():
    s = requests.Session()
    s.trust_env = False
    return s


def _lines(d, text):
    return [l for l in d.logText().splitlines() if text in l]


class _Reloadable:
    """A daemon started with --config FILE, and a way to rewrite and SIGHUP it."""

    def __init__(self, proxyd, tmp_path, text, *args):
        self.file = tmp_path / "proxyd.toml"
        self.file.write_text(text)
        self.d = proxyd("--config", self.file, *args)

    def reload(self, text, expect="SIGHUP: configuration reloaded"):
        before = len(_lines(self.d, expect))
        tmp = self.file.with_name("proxyd.toml.new")
        tmp.write_text(text)
        tmp.replace(self.file)
        self.d.proc.send_signal(signal.SIGHUP)
        waitFor(lambda: len(_lines(self.d, expect)) > before, timeout=10, message=repr(expect))


def test_pluginSettingsReloadKeepAliveIncluded(proxyd, origin, tmp_path):
    """A header plugin's value changes on SIGHUP; a keep-alive connection opened before sees it at its next request."""
    r = _Reloadable(proxyd, tmp_path, 'plugin = ["headers:set-response=X-Generation:1"]\n')
    s = _session()
    first = s.get(origin.url("/hello"), proxies=r.d.proxies, timeout=10)
    assert first.headers["X-Generation"] == "1"
    r.reload('plugin = ["headers:set-response=X-Generation:2"]\n')
    second = s.get(origin.url("/hello"), proxies=r.d.proxies, timeout=10)
    assert second.headers["X-Generation"] == "2"
    fresh = _session().get(origin.url("/hello"), proxies=r.d.proxies, timeout=10)
    assert fresh.headers["X-Generation"] == "2"
    assert r.d.running()


def test_pluginRemovedAndAdded(proxyd, origin, tmp_path):
    r = _Reloadable(proxyd, tmp_path, "")
    assert "X-Added" not in _session().get(origin.url("/hello"), proxies=r.d.proxies, timeout=10).headers
    r.reload('plugin = ["headers:set-response=X-Added:yes"]\n')
    assert _session().get(origin.url("/hello"), proxies=r.d.proxies, timeout=10).headers["X-Added"] == "yes"
    r.reload("")
    assert "X-Added" not in _session().get(origin.url("/hello"), proxies=r.d.proxies, timeout=10).headers


def test_proxyAuthFileReread(proxyd, origin, tmp_path):
    """Users added to --proxy-auth-file are accepted after SIGHUP; removed ones refused."""
    users = tmp_path / "users"
    users.write_text("alice:one\n")
    r = _Reloadable(proxyd, tmp_path, 'proxy-auth-file = "%s"\n' % users)
    bob = {"http": "http://bob:two@%s:%d" % r.d.address}
    alice = {"http": "http://alice:one@%s:%d" % r.d.address}
    assert _session().get(origin.url("/hello"), proxies=bob, timeout=10).status_code == 407
    assert _session().get(origin.url("/hello"), proxies=alice, timeout=10).status_code == 200
    users.write_text("bob:two\n")
    r.reload('proxy-auth-file = "%s"\n' % users)
    assert _session().get(origin.url("/hello"), proxies=bob, timeout=10).status_code == 200
    assert _session().get(origin.url("/hello"), proxies=alice, timeout=10).status_code == 407


def test_connectPortsPolicy(proxyd, tmp_path, origin):
    """--connect-ports from the file: a CONNECT to the origin's port is refused, then allowed after SIGHUP."""
    r = _Reloadable(proxyd, tmp_path, 'connect-ports = "443"\n')
    target = b"127.0.0.1:%d" % origin.port

    def connect():
        with RawConnection(r.d.address) as c:
            c.send(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
            return c.readHead()[1]

    assert connect() == 403
    r.reload('connect-ports = "443,%d"\n' % origin.port)
    assert connect() == 200


def test_badFileKeepsOldStateOneLine(proxyd, origin, tmp_path):
    """One bad value among good ones: nothing changes, one error line naming the option, the daemon runs on."""
    r = _Reloadable(proxyd, tmp_path, 'plugin = ["headers:set-response=X-Generation:1"]\n')
    s = _session()
    assert s.get(origin.url("/hello"), proxies=r.d.proxies, timeout=10).headers["X-Generation"] == "1"
    r.reload('plugin = ["headers:set-response=X-Generation:2"]\nidle-timeout = "soon"\n',
             expect="configuration not reloaded")
    observe(0.5, lambda: len(_lines(r.d, "configuration not reloaded")) > 1)
    errors = _lines(r.d, "configuration not reloaded")
    assert len(errors) == 1 and "idle-timeout" in errors[0] and "the old one stays" in errors[0], errors
    assert s.get(origin.url("/hello"), proxies=r.d.proxies, timeout=10).headers["X-Generation"] == "1"
    r.reload('plugin = ["headers:set-response=X-Generation:1"]\nplugin-oops = 1\n',
             expect="configuration not reloaded")
    assert len(_lines(r.d, "configuration not reloaded")) == 2
    assert r.d.running()
    assert "Traceback" not in r.d.logText()


def test_restartOnlyOptionSaysSo(proxyd, origin, tmp_path):
    """
    --mode changed in the file: one warning, the daemon stays a forward
    proxy, the rest applies.  --listen in the file too, but the command
    line gives it (and wins), so that is no change.
    """
    r = _Reloadable(proxyd, tmp_path, "")
    r.reload('mode = "mitm"\nlisten = ["tcp:1:interface=127.0.0.1"]\nplugin = ["headers:set-response=X-After:1"]\n')
    warnings = _lines(r.d, "applied only by a restart")
    assert len(warnings) == 1 and "--mode:" in warnings[0] and "--listen" not in warnings[0], warnings
    response = _session().get(origin.url("/hello"), proxies=r.d.proxies, timeout=10)
    assert response.headers["X-After"] == "1"


def test_unchangedHarKeepsItsFile(proxyd, origin, tmp_path):
    """
    logrotate's SIGHUP must not start an unchanged har recorder's file
    afresh: entries from before the reload are still there after it.
    """
    har = tmp_path / "flows.har"
    r = _Reloadable(proxyd, tmp_path, 'plugin = ["har:file=%s"]\n' % har)
    _session().get(origin.url("/hello?before"), proxies=r.d.proxies, timeout=10)
    r.reload('plugin = ["har:file=%s"]\n' % har)
    _session().get(origin.url("/hello?after"), proxies=r.d.proxies, timeout=10)
    import json

    urls = [e["request"]["url"] for e in json.loads(har.read_text())["log"]["entries"]]
    assert [u.rsplit("?", 1)[1] for u in urls] == ["before", "after"]
