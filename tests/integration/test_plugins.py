"""
Plugins, black box: the real C{twistd -n proxyd} from an installed venv,
run from C{/}, with a user's one-file plugin in a temporary
C{--plugin-path} and the bundled plugins, driven by requests, curl and raw
sockets against loopback origins.
"""

import gzip
import json
import signal
import socket
import time

import pytest
import requests

from tests.integration.origin import CHUNKED_BODY, HELLO, patternSha256
from tests.polling import rssKiB, waitFor

USER_PLUGIN = '''
"""A user's plugin: adds X-Plugin to requests; /boom raises; /hang never answers."""

from twisted.internet.defer import Deferred
from twisted.plugin import IPlugin
from zope.interface import implementer

from proxyd.interfaces import IProxyPlugin, PluginSettingsError, RequestRewriter


class _AddHeader(RequestRewriter):
    def __init__(self, value):
        self.value = value.encode()

    def requestHead(self, flow):
        if flow.request.path.startswith(b"/boom"):
            raise ValueError("boom requested")
        if flow.request.path.startswith(b"/hang"):
            return Deferred()
        flow.request.headers.addRawHeader(b"X-Plugin", self.value)


@implementer(IPlugin, IProxyPlugin)
class AddHeader:
    name = "addheader"
    description = "adds X-Plugin: VALUE to every request"

    def makeRewriter(self, settings):
        unknown = set(settings) - {"value"}
        if unknown:
            raise PluginSettingsError("%s: unknown setting" % sorted(unknown)[0])
        return _AddHeader(settings.get("value", "1"))


addheader = AddHeader()
'''


@pytest.fixture(scope="module")
def pluginDir(tmp_path_factory):
    d = tmp_path_factory.mktemp("userplugins")
    (d / "addheader.py").write_text(USER_PLUGIN)
    return d


def echoHeaders(response, name):
    assert response.status_code == 200, response.text
    return [v for (k, v) in response.json()["headers"] if k.lower() == name.lower()]


def test_userPluginForward(proxyd, origin, pluginDir):
    """A plugin from --plugin-path adds a request header the origin sees."""
    d = proxyd("--plugin-path", pluginDir, "--plugin", "addheader:value=fwd")
    r = requests.get(origin.url("/echo"), proxies=d.proxies, timeout=10)
    assert echoHeaders(r, "X-Plugin") == ["fwd"]


def test_userPluginInMitm(proxyd, tlsOrigin, certs, pluginDir, tmp_path):
    """The same plugin runs on intercepted HTTPS requests in mitm mode."""
    caDir = tmp_path / "ca"
    d = proxyd(
        "--mode", "mitm", "--connect-ports", "*", "--ca-dir", caDir,
        "--upstream-ca", certs["ca"], "--plugin-path", pluginDir, "--plugin", "addheader:value=mitm",
    )
    r = requests.get(tlsOrigin.url("/echo", host="localhost"), proxies=d.proxies,
                     verify=str(caDir / "ca.pem"), timeout=10)
    assert echoHeaders(r, "X-Plugin") == ["mitm"]


def test_pluginsComposeInOrder(proxyd, origin, pluginDir):
    """Two plugins apply in --plugin order: the origin sees their headers in that order."""
    d = proxyd(
        "--plugin-path", pluginDir,
        "--plugin", "addheader:value=first",
        "--plugin", "headers:set-request=X-Second:2,remove-request=User-Agent",
        "--plugin", "addheader:value=third",
    )
    r = requests.get(origin.url("/echo"), proxies=d.proxies, timeout=10)
    assert echoHeaders(r, "X-Plugin") == ["first", "third"]
    assert echoHeaders(r, "X-Second") == ["2"]
    assert echoHeaders(r, "User-Agent") == []


def test_raisingPluginIs502ThenServes(proxyd, origin, pluginDir):
    """A raising hook gives a 502 naming the plugin, logged once; the next request succeeds."""
    d = proxyd("--plugin-path", pluginDir, "--plugin", "addheader")
    with requests.Session() as s:
        r = s.get(origin.url("/boom"), proxies=d.proxies, timeout=10)
        assert r.status_code == 502
        assert "plugin addheader failed in requestHead: ValueError" in r.text
        r = s.get(origin.url("/hello"), proxies=d.proxies, timeout=10)
        assert r.status_code == 200 and r.content == HELLO
    log = d.logText()
    assert log.count("Plugin addheader failed in requestHead") == 1
    assert "boom requested" in log


def test_hookThatNeverAnswersIs504(proxyd, origin, pluginDir):
    """A hook whose Deferred never fires gives 504 after --plugin-timeout."""
    d = proxyd("--plugin-path", pluginDir, "--plugin", "addheader", "--plugin-timeout", "1")
    start = time.monotonic()
    r = requests.get(origin.url("/hang"), proxies=d.proxies, timeout=10)
    assert r.status_code == 504
    assert "did not answer requestHead within 1s" in r.text
    assert time.monotonic() - start < 5


@pytest.mark.slow
def test_headerPluginKeepsBigBodyStreaming(proxyd, origin):
    """With a head-only plugin a 200 MB body streams through: RSS stays flat."""
    d = proxyd("--plugin", "headers:set-response=X-Seen:1")
    n = 200 * 1024 * 1024
    import hashlib

    h = hashlib.sha256()
    before = rssKiB(d.pid)
    peak = before
    got = 0
    with requests.get(origin.url("/bytes?n=%d" % n), proxies=d.proxies, stream=True, timeout=60) as r:
        assert r.headers["X-Seen"] == "1"
        assert r.headers["Content-Length"] == str(n)
        for chunk in r.iter_content(1 << 20):
            h.update(chunk)
            got += len(chunk)
            if got % (16 << 20) < (1 << 20):
                peak = max(peak, rssKiB(d.pid))
    assert got == n and h.hexdigest() == patternSha256(n)
    assert peak - before < 20 * 1024, "proxyd grew by %d KiB" % (peak - before)


def _connect(address, target):
    s = socket.create_connection(address, timeout=10)
    try:
        s.sendall(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), target.encode()))
        data = b""
        while b"\r\n\r\n" not in data:
            more = s.recv(4096)
            if not more:
                break
            data += more
        return data
    finally:
        s.close()


def test_blockDeniesConnect(proxyd, tunnelTarget, origin):
    """block denies a matching CONNECT with its status; other hosts still tunnel; URLs get 403."""
    d = proxyd("--connect-ports", "*", "--plugin", "block:hosts=blocked.test|127.0.0.2,message=no ads")
    head = _connect(d.address, "blocked.test:443")
    assert head.startswith(b"HTTP/1.1 403 "), head
    assert b"no ads" in head
    head = _connect(d.address, "127.0.0.1:%d" % tunnelTarget.port)
    assert head.startswith(b"HTTP/1.1 200 "), head
    r = requests.get("http://blocked.test/x", proxies=d.proxies, timeout=10)
    assert r.status_code == 403 and "no ads" in r.text


def test_replaceOnChunkedText(proxyd, origin):
    """replace rewrites a chunked text/plain response; proxyd frames the new body."""
    d = proxyd("--plugin", "replace:pattern=chunk,replacement=CHUNK")
    r = requests.get(origin.url("/chunked"), proxies=d.proxies, timeout=10)
    assert r.status_code == 200
    assert r.content == CHUNKED_BODY.replace(b"chunk", b"CHUNK")
    assert r.headers.get("Content-Length") == str(len(r.content))


def test_harRecordsFlowsAndSurvivesSIGTERM(proxyd, origin, tmp_path):
    """har writes a HAR 1.2 file that parses after SIGTERM and lists the flows."""
    har = tmp_path / "flows.har"
    d = proxyd("--plugin", "har:file=%s" % har)
    requests.get(origin.url("/hello"), proxies=d.proxies, timeout=10)
    requests.post(origin.url("/echo"), data=b"posted", proxies=d.proxies, timeout=10)
    waitFor(lambda: har.exists() and har.read_text().count('"startedDateTime"') == 2, message="two HAR entries")
    json.loads(har.read_text())  # valid between entries
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    log = json.loads(har.read_text())["log"]
    assert log["version"] == "1.2"
    entries = log["entries"]
    assert [e["request"]["method"] for e in entries] == ["GET", "POST"]
    assert entries[0]["request"]["url"] == origin.url("/hello")
    assert entries[0]["response"]["status"] == 200
    assert entries[0]["response"]["content"]["text"] == HELLO.decode()
    assert entries[1]["request"]["postData"]["text"] == "posted"


def test_pluginsFromAnyDirectory(runTwistd, pluginDir):
    """--list-plugins from / lists the bundled plugins and the user's."""
    r = runTwistd(["proxyd", "--plugin-path", pluginDir, "--list-plugins"])
    assert r.returncode == 0, r
    names = [line.split()[0] for line in r.stdout.splitlines() if line.strip()]
    assert set(names) >= {"addheader", "block", "har", "headers", "redirect", "replace"}


def test_unknownPluginRefused(runTwistd):
    """An unknown --plugin is refused at start in one line listing what exists."""
    r = runTwistd(["-n", "--pidfile=", "proxyd", "--listen", "tcp:0:interface=127.0.0.1", "--plugin", "nope"])
    assert r.returncode == 1 and not r.timedOut, r
    assert len(r.stderrLines) == 1, r
    line = r.stderrLines[0]
    assert line.startswith("proxyd: --plugin nope: unknown plugin (available: "), line
    assert "headers" in line


def test_badSettingsRefused(runTwistd):
    """Bad settings are refused in one line naming the plugin and the key."""
    r = runTwistd(["-n", "--pidfile=", "proxyd", "--listen", "tcp:0:interface=127.0.0.1",
                   "--plugin", "block:hosts=x.test,status=abc"])
    assert r.returncode == 1 and not r.timedOut, r
    assert len(r.stderrLines) == 1, r
    assert r.stderrLines[0].startswith("proxyd: --plugin block: status"), r.stderrLines


def test_brokenPluginFileNamed(runTwistd, tmp_path):
    """A plugin file that fails to import is named in one line, with its error."""
    bad = tmp_path / "badplugins"
    bad.mkdir()
    (bad / "broken_thing.py").write_text("def oops(:\n")
    r = runTwistd(["-n", "--pidfile=", "proxyd", "--listen", "tcp:0:interface=127.0.0.1",
                   "--plugin-path", bad, "--plugin", "broken"])
    assert r.returncode == 1 and not r.timedOut, r
    assert len(r.stderrLines) == 1, r
    line = r.stderrLines[0]
    assert "unknown plugin" in line and str(bad / "broken_thing.py") in line and "SyntaxError" in line, line


def test_redirectPlugin(proxyd, origin):
    """redirect answers 307 for a mapped prefix; transparent mode fetches from the new origin."""
    d = proxyd("--plugin", "redirect:from=http://old.test/,to=%s,status=307" % origin.url("/"))
    r = requests.get("http://old.test/hello", proxies=d.proxies, timeout=10, allow_redirects=False)
    assert r.status_code == 307
    assert r.headers["Location"] == origin.url("/hello")
    d2 = proxyd("--plugin", "redirect:from=http://old.test/,to=%s,status=transparent" % origin.url("/"))
    r = requests.get("http://old.test/echo", proxies=d2.proxies, timeout=10)
    assert r.status_code == 200
    assert echoHeaders(r, "Host") == [origin.authority]


def test_replaceGzip(proxyd, origin):
    """replace decodes a gzip text body, rewrites it and re-encodes it."""
    d = proxyd("--plugin", "replace:pattern=hello,replacement=howdy")
    r = requests.get(origin.url("/gzip-hello"), proxies=d.proxies, timeout=10, stream=True)
    raw = r.raw.read(decode_content=False)
    assert r.headers.get("Content-Encoding") == "gzip"
    assert r.headers.get("Content-Length") == str(len(raw))
    assert gzip.decompress(raw) == b"howdy\n"


def test_listPluginsConsoleScript(venv, pluginDir):
    """`proxyd plugins` lists what --list-plugins lists."""
    import subprocess
    from pathlib import Path

    exe = Path(venv) / "bin" / "proxyd"
    if not exe.exists():
        pytest.skip("no proxyd console script")
    r = subprocess.run([str(exe), "plugins", "--plugin-path", str(pluginDir)], capture_output=True,
                       text=True, timeout=30, cwd="/")
    assert r.returncode == 0, r.stderr
    assert "addheader" in r.stdout and "har" in r.stdout
