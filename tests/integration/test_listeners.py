"""
Listeners: tcp6 on ::1, a unix socket, and several --listen at once.
"""

import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import IPV6, needsIPv6, runCurl, tcpListener, unixListener
from tests.integration.origin import HELLO, RawConnection


@pytest.fixture
def sockDir():
    """A short directory for unix sockets (paths are limited to ~100 bytes)."""
    d = tempfile.mkdtemp(prefix="proxyd-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _getThrough(address, origin):
    with RawConnection(address, timeout=10) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (origin.url("/hello").encode(),
                                                          origin.authority.encode()))
        return c.readResponse()


@needsIPv6
def test_tcp6Listener(proxyd, origin, curl):
    """--listen tcp6:PORT:interface=\\:\\:1 serves proxy requests on [::1]."""
    d = proxyd(listeners=[tcpListener(host="::1")])
    assert d.url.startswith("http://[::1]:")
    r = runCurl(curl, ["-x", d.url, origin.url("/hello")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO
    assert requests.get(origin.url("/hello"), proxies=d.proxies, timeout=10).content == HELLO


def test_unixListener(proxyd, origin, sockDir):
    """--listen unix:PATH serves proxy requests on the socket."""
    path = sockDir / "proxyd.sock"
    proxyd(listeners=[unixListener(path)])
    resp = _getThrough(str(path), origin)
    assert resp.status == 200
    assert resp.body == HELLO


def test_unixListenerSelfPage(proxyd, sockDir):
    """A unix-socket client (no IP address) may use proxyd's own pages."""
    path = sockDir / "proxyd.sock"
    proxyd(listeners=[unixListener(path)])
    with RawConnection(str(path), timeout=10) as c:
        c.send(b"GET /healthz HTTP/1.1\r\nHost: proxyd\r\n\r\n")
        resp = c.readResponse()
    assert resp.status == 200
    assert resp.body.strip() == b"ok"


def test_twoListeners(proxyd, origin, sockDir):
    """Two --listen options: both listeners serve."""
    listeners = [tcpListener(), tcpListener()]
    if IPV6:
        listeners.append(tcpListener(host="::1"))
    listeners.append(unixListener(sockDir / "p.sock"))
    proxyd(listeners=listeners)
    for _, address in listeners:
        resp = _getThrough(address, origin)
        assert resp.status == 200, address
        assert resp.body == HELLO
