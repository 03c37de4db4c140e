"""
Access policy: --allow, --proxy-auth, --proxy-auth-file, --deny-private and
the always-denied link-local addresses, for plain requests and CONNECT.
"""

import base64
import uuid

import bcrypt
import pytest
import requests

from tests.integration.conftest import runCurl
from tests.integration.origin import HELLO, RawConnection, connectTunnel


def _basic(user, password):
    return b"Basic " + base64.b64encode(("%s:%s" % (user, password)).encode())


def _get(d, url, auth=None, **kw):
    headers = {}
    if auth:
        headers["Proxy-Authorization"] = _basic(*auth).decode()
    return requests.get(url, proxies=d.proxies, headers=headers, timeout=15, **kw)


# ---------------------------------------------------------------------------
# --allow


def test_allowExcludingClientIs403(proxyd, origin, tunnelTarget):
    """--allow 10.0.0.0/8: a 127.0.0.1 client gets 403 for GET and CONNECT; the origin is not contacted."""
    d = proxyd("--allow", "10.0.0.0/8", "--connect-ports", str(tunnelTarget.port))
    tag = uuid.uuid4().hex
    with RawConnection(d.address) as c:
        c.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (
            origin.url("/hello?" + tag).encode(), origin.authority.encode()))
        resp = c.readResponse()
        assert resp.status == 403, resp
        assert c.closedWithin(5), "connection not closed after the 403"
    conn, resp = connectTunnel(d.address, tunnelTarget.authority)
    with conn:
        assert resp.status == 403, resp
    assert not any(tag in p for p in origin.paths())


def test_allowIncludingClient(proxyd, origin):
    """--allow with a network that holds the client lets it through."""
    d = proxyd("--allow", "10.0.0.0/8", "--allow", "127.0.0.0/8")
    assert _get(d, origin.url("/hello")).content == HELLO


# ---------------------------------------------------------------------------
# --proxy-auth


@pytest.fixture(scope="module")
def authed(moduleProxyd, tunnelTarget):
    return moduleProxyd("--proxy-auth", "alice:s3cr:et", "--connect-ports", str(tunnelTarget.port))


def test_authMissingIs407(authed, origin):
    """No credentials: 407 with Proxy-Authenticate: Basic realm="proxyd"."""
    r = _get(authed, origin.url("/hello"))
    assert r.status_code == 407
    assert r.headers.get("Proxy-Authenticate") == 'Basic realm="proxyd"'
    assert r.headers.get("Content-Type", "").startswith("text/plain")


def test_authWrongIs407(authed, origin):
    """Wrong password or user: 407."""
    for user, pw in (("alice", "wrong"), ("bob", "s3cr:et"), ("alice", "")):
        r = _get(authed, origin.url("/hello"), auth=(user, pw))
        assert r.status_code == 407, (user, pw)


def test_authNotBasicIs407(authed, origin):
    """A non-Basic or malformed Proxy-Authorization is 407, not a crash."""
    for value in (b"Bearer abc", b"Basic !!!notbase64", b"Basic", b"Basic " + base64.b64encode(b"nocolon")):
        with RawConnection(authed.address) as c:
            c.send(b"GET %s HTTP/1.1\r\nHost: %s\r\nProxy-Authorization: %s\r\n\r\n" % (
                origin.url("/hello").encode(), origin.authority.encode(), value))
            assert c.readResponse().status == 407, value


def test_authCorrectPassesAndIsNotForwarded(authed, origin):
    """Correct credentials (password containing ':'): 200, and the origin never sees Proxy-Authorization."""
    r = _get(authed, origin.url("/echo"), auth=("alice", "s3cr:et"))
    assert r.status_code == 200
    names = [k.lower() for k, v in r.json()["headers"]]
    assert "proxy-authorization" not in names


def test_authCurl(authed, origin, curl):
    """curl -U user:password works."""
    r = runCurl(curl, ["-x", authed.url, "-U", "alice:s3cr:et", origin.url("/hello")])
    assert r.returncode == 0, r.stderr
    assert r.stdout == HELLO


def test_authConnect(authed, tunnelTarget):
    """CONNECT without credentials: 407 with the challenge; with them: a working tunnel."""
    conn, resp = connectTunnel(authed.address, tunnelTarget.authority)
    with conn:
        assert resp.status == 407, resp
        assert resp.header("Proxy-Authenticate") == ['Basic realm="proxyd"']
    conn, resp = connectTunnel(authed.address, tunnelTarget.authority,
                               headers=b"Proxy-Authorization: " + _basic("alice", "wrong") + b"\r\n")
    with conn:
        assert resp.status == 407, resp
    conn, resp = connectTunnel(authed.address, tunnelTarget.authority,
                               headers=b"Proxy-Authorization: " + _basic("alice", "s3cr:et") + b"\r\n",
                               extra=b"ECHO\nauthed")
    with conn:
        assert resp.status == 200, resp
        assert conn.readExactly(6) == b"authed"


def test_authFileBcryptAndPlain(proxyd, origin, tmp_path):
    """--proxy-auth-file with an htpasswd bcrypt ($2y$) line and a plain line."""
    hashed = bcrypt.hashpw(b"b-secret", bcrypt.gensalt(rounds=4)).decode()
    hashed = "$2y$" + hashed[4:]
    users = tmp_path / "users"
    users.write_text("alice:%s\nbob:plain-pw\n" % hashed)
    d = proxyd("--proxy-auth-file", str(users))
    assert _get(d, origin.url("/hello")).status_code == 407
    assert _get(d, origin.url("/hello"), auth=("alice", "b-secret")).content == HELLO
    assert _get(d, origin.url("/hello"), auth=("bob", "plain-pw")).content == HELLO
    assert _get(d, origin.url("/hello"), auth=("alice", "wrong")).status_code == 407
    assert _get(d, origin.url("/hello"), auth=("alice", hashed)).status_code == 407
    assert _get(d, origin.url("/hello"), auth=("bob", "wrong")).status_code == 407


# ---------------------------------------------------------------------------
# Private and link-local upstreams


@pytest.fixture(scope="module")
def denying(moduleProxyd, tunnelTarget):
    return moduleProxyd("--deny-private", "--connect-ports", "443,%d" % tunnelTarget.port)


def _assertDenied(resp, what):
    assert resp.status_code == 403, (what, resp.status_code, resp.text)
    text = resp.text.lower()
    assert any(w in text for w in ("loopback", "private", "127.0.0.1", "::1", "link-local", "169.254")), resp.text


def test_denyPrivateLoopbackIP(denying, origin):
    """--deny-private: a loopback origin is 403 with the reason; the origin is not contacted."""
    tag = uuid.uuid4().hex
    _assertDenied(_get(denying, origin.url("/hello?" + tag)), "127.0.0.1")
    assert not any(tag in p for p in origin.paths())


def test_denyPrivateNameResolvingToLoopback(denying, origin):
    """--deny-private: a name that resolves to 127.0.0.1 (localhost) is caught too."""
    tag = uuid.uuid4().hex
    _assertDenied(_get(denying, "http://localhost:%d/hello?%s" % (origin.port, tag)), "localhost")
    assert not any(tag in p for p in origin.paths())


def test_denyPrivateConnect(denying, tunnelTarget):
    """--deny-private: CONNECT to a loopback address or name is 403."""
    for target in (tunnelTarget.authority, "localhost:%d" % tunnelTarget.port):
        conn, resp = connectTunnel(denying.address, target)
        with conn:
            assert resp.status == 403, (target, resp)
    assert denying.running()


def test_denyPrivateOtherRanges(denying):
    """--deny-private: 10/8, 192.168/16 and IPv6 loopback literals are 403 without connecting."""
    for url in ("http://10.1.2.3/", "http://192.168.1.1/", "http://[::1]:1/", "http://0.0.0.0:1/"):
        r = requests.get(url, proxies=denying.proxies, timeout=15)
        assert r.status_code == 403, (url, r.status_code, r.text)


def test_linkLocalDeniedByDefault(proxyd):
    """With default settings (loopback listener), link-local metadata addresses are still 403."""
    d = proxyd()
    r = requests.get("http://169.254.169.254/latest/meta-data/", proxies=d.proxies, timeout=15)
    _assertDenied(r, "169.254.169.254")
    conn, resp = connectTunnel(d.address, "169.254.169.254:443", timeout=15)
    with conn:
        assert resp.status == 403, resp


def test_loopbackAllowedByDefault(proxyd, origin):
    """With default settings and a loopback-only listener, a loopback origin is allowed."""
    d = proxyd()
    assert _get(d, origin.url("/hello")).content == HELLO
