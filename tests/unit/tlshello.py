"""
Real TLS ClientHellos from Python's ssl module (OpenSSL), for the tests of
what proxyd does with the first bytes after a CONNECT.
"""

import ssl


def clientHello(serverName="example.com", alpn=None, maxVersion=None, minVersion=None):
    """
    The bytes of the ClientHello that Python's ssl module sends for
    C{serverName} (None: no SNI), caught from a memory BIO before any
    server answers.  A new hello (new random) on every call.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if serverName is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if maxVersion is not None:
        context.maximum_version = maxVersion
    if minVersion is not None:
        context.minimum_version = minVersion
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=serverName)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()
