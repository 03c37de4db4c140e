# -*- test-case-name: tests.integration.test_forward -*-
"""
Test-side servers and wire helpers for the integration tests.

Everything here runs inside the pytest process, in threads, on 127.0.0.1
or ::1 only.  proxyd itself never imports this module.

- L{HTTPOrigin}: a small HTTP/1.1 origin (see L{OriginHandler} for paths).
- L{TunnelTarget}: a raw TCP server for CONNECT tests, driven by a first line.
- L{GarbageServer}: answers anything with C{lol\\r\\n\\r\\n} and closes.
- L{Blackhole}: a listening socket whose backlog is full, so connects hang.
- L{TLSOrigin}: L{HTTPOrigin} behind TLS with a throwaway CA made here.
- L{RawConnection}: a socket with an exact-bytes HTTP/1.1 response reader.
- L{patternChunks}/L{patternSha256}: deterministic pseudo-random bodies.
"""

import datetime
import gzip
import hashlib
import http.server
import ipaddress
import json
import random
import socket
import socketserver
import ssl
import threading
import time
from functools import lru_cache
from urllib.parse import parse_qs, urlsplit

# ---------------------------------------------------------------------------
# Deterministic pseudo-random data

_BLOCK = random.Random(0x9E3779B9).randbytes(1 << 20)
_BLOCK_VIEW = memoryview(_BLOCK)
CHUNK = 64 * 1024


def patternChunks(n, chunk=CHUNK):
    """
    Yield C{n} bytes of deterministic pseudo-random data as memoryviews of at
    most C{chunk} bytes.  The stream is made of 64 KiB blocks, each starting
    at a different offset of a 1 MiB random block, so a lost, repeated or
    reordered block changes the digest; C{chunk} only changes how it is cut.
    """
    sent = 0
    i = 0
    span = len(_BLOCK) - CHUNK
    while sent < n:
        size = min(CHUNK, n - sent)
        off = (i * 7919 * 13) % span
        block = _BLOCK_VIEW[off:off + size]
        for start in range(0, size, chunk):
            yield block[start:start + chunk]
        sent += size
        i += 1


@lru_cache(maxsize=None)
def patternSha256(n):
    """The sha256 hex digest of C{patternChunks(n)}."""
    h = hashlib.sha256()
    for c in patternChunks(n):
        h.update(c)
    return h.hexdigest()


CHUNKED_PARTS = [b"first chunk\n", b"x" * 5000 + b"\n", b"", b"last chunk\n"]
CHUNKED_BODY = b"".join(CHUNKED_PARTS)
CLOSE_DELIMITED_BODY = b"".join(bytes(c) for c in patternChunks(100_000))
HELLO = b"hello\n"


# ---------------------------------------------------------------------------
# HTTP origin


def _okWithHeaders(headers):
    """An L{OriginHandler} route: the body read, then 200 C{ok\\n} with C{headers}, in order."""
    def route(self, path, query, head):
        self._readBody(lambda d: None)
        self._send(200, b"ok\n", head=head, headers=headers)
    return route


class OriginHandler(http.server.BaseHTTPRequestHandler):
    """
    Paths:
      /hello               6 bytes, Content-Length, keep-alive
      /echo                JSON: method, path, headers (ordered pairs), body sha256/length
      /bytes?n=N           N bytes of patternChunks(N), Content-Length
      /chunked             CHUNKED_BODY with Transfer-Encoding: chunked
      /close-delimited     CLOSE_DELIMITED_BODY, no framing, then close
      /upload              reads the body streaming, answers JSON sha256/length
      /expect?code=N       answers N (417) to Expect: 100-continue without reading the body
      /truncated           Content-Length 1000000, 1000 bytes, close
      /truncated-chunked   three chunks, no last chunk, close
      /slow-head           never answers (until the server is closed)
      /delay?ms=N&id=X     waits N ms then answers X
      /status/N            status N (no body for 204/304)
      /multi-headers       repeated Set-Cookie and X-Multi response headers
      /hop-response        response carrying hop-by-hop headers
      /big-head?n=N        a response head of about N bytes
      /close-after         /hello, then the origin closes the connection silently
      /drop-next           /hello, keep-alive; the next request on this connection is
                           read (head only) and the connection closed without an answer
    """

    protocol_version = "HTTP/1.1"
    server_version = "origin/1"
    sys_version = ""

    def log_message(self, format, *args):
        pass

    # -- plumbing

    def setup(self):
        super().setup()
        self.connection.settimeout(60)

    def _target(self):
        parts = urlsplit(self.path)
        return parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()}

    def handle_expect_100(self):
        path, query = self._target()
        self.server.record(self)
        if path == "/expect":
            code = int(query.get("code", "417"))
            body = ("refused by origin: %d\n" % code).encode()
            self.send_response(code)
            if code == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="origin"')
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return False
        self._recorded = True
        return super().handle_expect_100()

    def _readBody(self, sink):
        """Feed the request body to C{sink(bytes)}; return its length."""
        te = self.headers.get("Transfer-Encoding", "")
        total = 0
        if "chunked" in te.lower():
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    raise ConnectionError("EOF in chunk size")
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                self._readExactly(size, sink, "chunk")
                total += size
                self.rfile.readline(16)
        length = int(self.headers.get("Content-Length", "0") or 0)
        self._readExactly(length, sink, "body")
        return length

    def _readExactly(self, n, sink, what):
        """Feed the next C{n} bytes to C{sink(bytes)}; an EOF before is an error in C{what}."""
        while n:
            data = self.rfile.read(min(n, CHUNK))
            if not data:
                raise ConnectionError("EOF in " + what)
            sink(data)
            n -= len(data)

    def _send(self, code, body=b"", ctype="text/plain", headers=(), head=False):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    # -- dispatch

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_OPTIONS = do_PATCH = do_GET

    def do_HEAD(self):
        self._dispatch(head=True)

    def _dispatch(self, head=False):
        path, query = self._target()
        if not getattr(self, "_recorded", False):
            self.server.record(self)
        self._recorded = False
        if getattr(self, "_dropNext", False):
            # /drop-next asked for this: close without reading or answering.
            self.close_connection = True
            return
        name = "route_" + path.strip("/").split("/")[0].replace("-", "_")
        route = getattr(self, name, None)
        if route is None:
            self._readBody(lambda d: None)
            self._send(404, b"origin: no such path\n", head=head)
            return
        route(path, query, head)

    # -- routes

    def route_hello(self, path, query, head):
        self._readBody(lambda d: None)
        self._send(200, HELLO, head=head)

    def route_echo(self, path, query, head):
        h = hashlib.sha256()
        length = self._readBody(h.update)
        body = json.dumps({
            "method": self.command,
            "path": self.path,
            "version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "bodySha256": h.hexdigest(),
            "bodyLength": length,
        }).encode()
        self._send(200, body, "application/json", head=head)

    def route_bytes(self, path, query, head):
        self._readBody(lambda d: None)
        n = int(query.get("n", "0"))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        if not head:
            for c in patternChunks(n):
                self.wfile.write(c)

    def route_gzip_hello(self, path, query, head):
        self._readBody(lambda d: None)
        self._send(200, gzip.compress(HELLO), "text/plain; charset=utf-8", headers=[("Content-Encoding", "gzip")], head=head)

    def route_chunked(self, path, query, head):
        self._readBody(lambda d: None)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if head:
            return
        for part in CHUNKED_PARTS:
            if part:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.wfile.write(b"0\r\n\r\n")

    def route_close_delimited(self, path, query, head):
        self._readBody(lambda d: None)
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
        if not head:
            for i in range(0, len(CLOSE_DELIMITED_BODY), 7000):
                self.wfile.write(CLOSE_DELIMITED_BODY[i:i + 7000])
        self.close_connection = True

    def route_upload(self, path, query, head):
        h = hashlib.sha256()
        length = self._readBody(h.update)
        body = json.dumps({"sha256": h.hexdigest(), "length": length}).encode()
        self._send(200, body, "application/json", head=head)

    def route_expect(self, path, query, head):
        # Reached only without "Expect: 100-continue".
        self._readBody(lambda d: None)
        self._send(int(query.get("code", "417")), b"no expectation\n", head=head)

    def route_truncated(self, path, query, head):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        self.wfile.write(b"t" * 1000)
        self.close_connection = True

    def route_truncated_chunked(self, path, query, head):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for part in (b"a" * 100, b"b" * 100, b"c" * 100):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        self.close_connection = True

    def route_slow_head(self, path, query, head):
        self.server.stopped.wait(60)
        self.close_connection = True

    def route_delay(self, path, query, head):
        self._readBody(lambda d: None)
        # The slow origin under test; a closing server does not wait it out.
        self.server.stopped.wait(int(query.get("ms", "100")) / 1000.0)
        self._send(200, query.get("id", "").encode(), head=head)

    def route_status(self, path, query, head):
        self._readBody(lambda d: None)
        code = int(path.split("/")[2])
        if code in (204, 304):
            self.send_response(code)
            if code == 304:
                self.send_header("ETag", '"v1"')
            self.end_headers()
            return
        self._send(code, b"status %d\n" % code, head=head)

    route_multi_headers = _okWithHeaders([
        ("Set-Cookie", "a=1; Path=/"), ("X-Multi", "1"), ("Set-Cookie", "b=2; Path=/"),
        ("X-Multi", "2"), ("X-Multi", "3")])

    route_hop_response = _okWithHeaders([
        ("Connection", "X-Hop-Resp"), ("X-Hop-Resp", "1"), ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", 'Basic realm="origin"'), ("Proxy-Connection", "keep-alive"),
        ("Trailer", "X-Trail"), ("X-End-To-End", "kept")])

    def route_big_head(self, path, query, head):
        self._readBody(lambda d: None)
        n = int(query.get("n", "100000"))
        self._send(200, b"ok\n", head=head, headers=[("X-Big", "b" * n)])

    def route_drop_next(self, path, query, head):
        self._readBody(lambda d: None)
        self._send(200, HELLO, head=head)
        self._dropNext = True

    def route_close_after(self, path, query, head):
        self._readBody(lambda d: None)
        self._send(200, HELLO, head=head)
        self.close_connection = True


class _ServerBase:
    """Start/stop helpers shared by the threaded servers below."""

    def startThread(self):
        self.stopped = threading.Event()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def close(self):
        self.stopped.set()
        self.shutdown()
        self.server_close()

    def handle_error(self, request, client_address):
        # Resets and timeouts caused on purpose by the tests are expected.
        pass


class HTTPOrigin(_ServerBase, http.server.ThreadingHTTPServer):
    """
    The HTTP/1.1 origin.  C{connections} counts accepted TCP connections and
    C{requests} records (method, path, headers) of every request head seen.
    """

    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, host="127.0.0.1", handler=OriginHandler):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host = host
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = []
        super().__init__((host, 0), handler)
        self.port = self.server_address[1]

    def server_bind(self):
        # Skip HTTPServer.server_bind's getfqdn() lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.host
        self.server_port = self.server_address[1]

    def process_request(self, request, client_address):
        with self.lock:
            self.connections += 1
        super().process_request(request, client_address)

    def record(self, handler):
        with self.lock:
            self.requests.append((handler.command, handler.path, list(handler.headers.items())))

    def paths(self):
        with self.lock:
            return [p for (_, p, _) in self.requests]

    @property
    def authority(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s:%d" % (host, self.port)

    def url(self, path):
        return "http://%s%s" % (self.authority, path)

    @classmethod
    def start(cls, host="127.0.0.1"):
        return cls(host).startThread()


# ---------------------------------------------------------------------------
# TLS origin and throwaway certificates


def _issue(subject, caKey, caName, notBefore, notAfter, extensions):
    """
    A new P-256 key and a certificate for it with subject C{subject} (an
    C{x509.Name}), valid from C{notBefore} to C{notAfter}, carrying the
    (extension, critical) pairs C{extensions(key)} yields, in order, and
    signed (SHA-256) by the CA C{caKey}/C{caName}, or by the new key itself
    if C{caKey} is None: (key, certificate).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject if caKey is None else caName)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(notBefore)
        .not_valid_after(notAfter)
    )
    for extension, critical in extensions(key):
        builder = builder.add_extension(extension, critical=critical)
    return key, builder.sign(key if caKey is None else caKey, hashes.SHA256())


def makeCA(name, notBefore, notAfter, caKey=None, caName=None):
    """
    A P-256 CA certificate (CA:true, keyCertSign and cRLSign, an SKI) with
    subject C{name} (an C{x509.Name}), valid from C{notBefore} to
    C{notAfter}: self-signed or, given the CA C{caKey}/C{caName}, an
    intermediate signed by it (pathlen 0, an AKI): (key, certificate).
    """
    from cryptography import x509

    def extensions(key):
        yield x509.BasicConstraints(ca=True, path_length=None if caKey is None else 0), True
        yield x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True,
            crl_sign=True, encipher_only=False, decipher_only=False), True
        yield x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False
        if caKey is not None:
            yield x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()), False

    return _issue(name, caKey, caName, notBefore, notAfter, extensions)


def makeLeaf(caKey, caName, commonName, sans, notBefore, notAfter, clientAuth=False):
    """
    A P-256 end-entity certificate for C{commonName} (an AKI), signed by the
    CA C{caKey}/C{caName}, valid from C{notBefore} to C{notAfter}: a server
    certificate (serverAuth) or, with C{clientAuth}, a client one
    (clientAuth); for the C{x509} general names C{sans} unless that is None
    (no SAN extension): (key, certificate).
    """
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def extensions(key):
        yield x509.BasicConstraints(ca=False, path_length=None), True
        if sans is not None:
            yield x509.SubjectAlternativeName(sans), False
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if clientAuth else ExtendedKeyUsageOID.SERVER_AUTH
        yield x509.ExtendedKeyUsage([usage]), False
        yield x509.AuthorityKeyIdentifier.from_issuer_public_key(caKey.public_key()), False

    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, commonName)])
    return _issue(subject, caKey, caName, notBefore, notAfter, extensions)


def privateKeyPEM(key):
    """C{key} as unencrypted PKCS#8 PEM."""
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def makeCertificates(directory, names=("localhost",), ips=("127.0.0.1", "::1")):
    """
    Write a throwaway CA (C{ca.pem}) and a leaf for C{names}/C{ips}
    (C{leaf.pem}, C{leaf.key}) to C{directory}; return their paths.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    notBefore, notAfter = now - datetime.timedelta(days=1), now + datetime.timedelta(days=2)
    caName = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "proxyd test CA")])
    caKey, ca = makeCA(caName, notBefore, notAfter)
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    leafKey, leaf = makeLeaf(caKey, caName, names[0], sans, notBefore, notAfter)
    paths = {
        "ca": directory / "ca.pem",
        "cert": directory / "leaf.pem",
        "key": directory / "leaf.key",
    }
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(privateKeyPEM(leafKey))
    return paths


class TLSOrigin(HTTPOrigin):
    """L{HTTPOrigin} speaking HTTPS with a certificate from L{makeCertificates}."""

    def __init__(self, certPaths, host="127.0.0.1"):
        self.sslContext = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.sslContext.load_cert_chain(str(certPaths["cert"]), str(certPaths["key"]))
        super().__init__(host)

    def get_request(self):
        sock, addr = self.socket.accept()
        sock.settimeout(10)
        # The handshake happens in the handler thread, on first read.
        return self.sslContext.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False), addr

    def url(self, path, host=None):
        return "https://%s:%d%s" % (host or self.host, self.port, path)

    @classmethod
    def start(cls, certPaths, host="127.0.0.1"):
        return cls(certPaths, host).startThread()


# ---------------------------------------------------------------------------
# Raw TCP servers


class _RawServer(_ServerBase, socketserver.ThreadingTCPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, host="127.0.0.1"):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.host = host
        self.lock = threading.Lock()
        self.connections = 0
        super().__init__((host, 0), self.Handler)
        self.port = self.server_address[1]

    def process_request(self, request, client_address):
        with self.lock:
            self.connections += 1
        super().process_request(request, client_address)

    @property
    def authority(self):
        host = "[%s]" % self.host if ":" in self.host else self.host
        return "%s:%d" % (host, self.port)

    @classmethod
    def start(cls, host="127.0.0.1"):
        return cls(host).startThread()


def _readLine(sock, limit=1024):
    data = b""
    while not data.endswith(b"\n"):
        c = sock.recv(1)
        if not c:
            break
        data += c
        if len(data) > limit:
            break
    return data


def _readToEOF(sock, sink):
    total = 0
    while True:
        try:
            data = sock.recv(CHUNK * 4)
        except ConnectionResetError:
            break
        if not data:
            break
        sink(data)
        total += len(data)
    return total


class _TunnelHandler(socketserver.BaseRequestHandler):
    def handle(self):
        sock = self.request
        sock.settimeout(120)
        line = _readLine(sock).decode("latin-1").split()
        if not line:
            return
        cmd = line[0]
        if cmd == "ECHO":
            while True:
                data = sock.recv(CHUNK)
                if not data:
                    break
                sock.sendall(data)
        elif cmd == "SHA":
            h = hashlib.sha256()
            n = _readToEOF(sock, h.update)
            sock.sendall(("%s %d\n" % (h.hexdigest(), n)).encode())
        elif cmd == "SEND":
            for c in patternChunks(int(line[1])):
                sock.sendall(c)
            sock.shutdown(socket.SHUT_WR)
            _readToEOF(sock, lambda d: None)
        elif cmd == "HALF":
            token = line[1]
            sock.sendall(b"bye\n")
            sock.shutdown(socket.SHUT_WR)
            h = hashlib.sha256()
            n = _readToEOF(sock, h.update)
            with self.server.lock:
                self.server.results[token] = (h.hexdigest(), n)


class TunnelTarget(_RawServer):
    """
    A raw TCP server for CONNECT tests.  The client's first line picks what
    it does:
      ECHO\\n          echo every byte back until EOF, then close
      SHA\\n           read to EOF, answer "<sha256hex> <length>\\n", close
      SEND N\\n        send patternChunks(N), shut down writing, read to EOF, close
      HALF TOKEN\\n    send "bye\\n", shut down writing, read to EOF, record
                      (sha256, length) of what came in results[TOKEN]
    """

    Handler = _TunnelHandler

    def __init__(self, host="127.0.0.1"):
        self.results = {}
        super().__init__(host)


class _GarbageHandler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.settimeout(5)
        try:
            self.request.recv(65536)
        except OSError:
            pass
        self.request.sendall(b"lol\r\n\r\n")


class GarbageServer(_RawServer):
    """Reads a request, answers C{lol\\r\\n\\r\\n}, closes."""

    Handler = _GarbageHandler


class Blackhole:
    """
    A listening socket with backlog 0 whose queue is already full, so that a
    new connection to it neither completes nor is refused (SYNs are dropped).
    """

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fillers = []
        for _ in range(4):
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self.fillers.append(c)

    def close(self):
        for c in self.fillers:
            c.close()
        self.sock.close()


def freePort(host="127.0.0.1"):
    """A TCP port nothing listens on right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# Raw client side


class Response:
    def __init__(self, version, status, reason, headers, body, head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # ordered list of (name, value) as str
        self.body = body
        self.head = head  # the raw head bytes

    def header(self, name):
        """The values of header C{name}, in order."""
        return [v for (k, v) in self.headers if k.lower() == name.lower()]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %s %s %r>" % (self.status, self.headers, self.body[:200])


class ConnectionClosed(Exception):
    pass


class RawConnection:
    """
    A client socket that sends exact bytes and reads HTTP/1.1 responses.
    Every read is bounded by C{timeout}.
    """

    def __init__(self, address, timeout=10.0, family=None):
        if isinstance(address, str):
            family = socket.AF_UNIX
        elif family is None:
            family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(CHUNK * 4)
        if not data:
            raise ConnectionClosed("connection closed")
        self.buf += data

    def readExactly(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def readLine(self, limit=1 << 20):
        while b"\r\n" not in self.buf:
            if len(self.buf) > limit:
                raise ValueError("line too long")
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def readHead(self):
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        version, status, *reason = lines[0].decode("latin-1").split(" ", 2)
        headers = []
        for line in lines[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k.strip(), v.strip()))
        return version, int(status), (reason[0] if reason else ""), headers, head

    def readResponse(self, method="GET", skipInformational=True):
        """Read one response; its body framed by HEAD/1xx/204/304, TE, CL or close."""
        while True:
            version, status, reason, headers, head = self.readHead()
            if 100 <= status < 200 and skipInformational and status != 101:
                continue
            break
        lower = {}
        for k, v in headers:
            lower.setdefault(k.lower(), []).append(v)
        if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
            body = b""
        elif any("chunked" in v.lower() for v in lower.get("transfer-encoding", [])):
            parts = []
            while True:
                size = int(self.readLine().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.readLine() != b"":
                        pass
                    break
                parts.append(self.readExactly(size))
                if self.readExactly(2) != b"\r\n":
                    raise ValueError("bad chunk terminator")
            body = b"".join(parts)
        elif "content-length" in lower:
            body = self.readExactly(int(lower["content-length"][0]))
        elif method == "CONNECT" and 200 <= status < 300:
            body = b""
        else:
            body = self.readUntilClose()
        return Response(version, status, reason, headers, body, head)

    def readUntilClose(self, limit=1 << 26):
        """Read until EOF; a reset counts as EOF.  Returns what was read."""
        while len(self.buf) < limit:
            try:
                self._fill()
            except (ConnectionClosed, ConnectionResetError):
                break
        data, self.buf = self.buf, b""
        return data

    def closedWithin(self, seconds):
        """
        True if the peer closes (EOF or reset) within C{seconds}; any bytes
        received meanwhile are kept in C{self.buf}.
        """
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except (ConnectionResetError, BrokenPipeError):
                return True
            if not data:
                return True
            self.buf += data


def connectTunnel(proxyAddress, target, extra=b"", headers=b"", timeout=10.0):
    """
    Open a CONNECT tunnel to C{target} ("host:port") through the proxy and
    return (RawConnection, Response).  C{extra} is sent in the same write as
    the CONNECT head.
    """
    conn = RawConnection(proxyAddress, timeout=timeout)
    conn.send(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n%s\r\n%s" % (
        target.encode(), target.encode(), headers, extra))
    resp = conn.readResponse(method="CONNECT")
    return conn, resp


# ---------------------------------------------------------------------------
# More certificate builders: chains and client certificates (reverse mode,
# HTTPS proxy listeners)


def makeIntermediateCA(caKey, caName, name, notBefore, notAfter):
    """
    A P-256 intermediate CA (CA:true, pathlen 0, keyCertSign, an SKI and an
    AKI) with subject C{name}, signed by the CA C{caKey}/C{caName}:
    (key, certificate).  L{makeCA} with an issuer.
    """
    return makeCA(name, notBefore, notAfter, caKey, caName)


def makeClientLeaf(caKey, caName, commonName, notBefore, notAfter):
    """
    A P-256 client certificate (clientAuth, an AKI) for C{commonName},
    signed by the CA C{caKey}/C{caName}: (key, certificate).
    L{makeLeaf} with C{clientAuth} and no SAN.
    """
    return makeLeaf(caKey, caName, commonName, None, notBefore, notAfter, clientAuth=True)


def certificatesPEM(*certs):
    """The C{x509} certificates C{certs}, in order, as one PEM bundle."""
    from cryptography.hazmat.primitives import serialization

    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)
