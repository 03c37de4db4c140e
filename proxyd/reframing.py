# -*- test-case-name: tests.unit.test_reframing -*-
"""
A message after the plugins had it, as it goes on the wire: the
framing (SPEC: "after a rewrite proxyd fixes the framing", so a plugin
never edits framing headers) and the upstream request's head.  Sans-I/O:
each rule takes the head as it arrived and what the plugins asked for, and
says which framing header goes out and how the body is sent.

  - a body held whole is sent with its Content-Length;
  - a streamed body keeps the original Content-Length while every filter
    keeps lengths, and is chunked once one may not;
  - a response without a body (HEAD, 1xx, 204, 304) keeps the upstream's
    framing headers, which describe the body it would have had.
"""

from proxyd import h1
from proxyd.forwarded import replaceForwarding
from proxyd.headers import FRAMING, addVia, requestWirePairs

__all__ = [
    "bodyless", "keepsLength", "requestFraming", "streamedResponseFraming", "upstreamRequestHead",
    "wholeResponseFraming",
]


def bodyless(method, status):
    """Whether a response to C{method} with C{status} has no body on the wire."""
    return method == b"HEAD" or status in (204, 304) or 100 <= status < 200


def keepsLength(filters):
    """Whether every C{(stage, filter)} of C{filters} (None: none) keeps the body's length."""
    return filters is None or all(f.keepsLength for _, f in filters)


def requestFraming(head, wholeBody, filters):
    """
    How the request goes upstream.

    @param head: the client's L{proxyd.h1heads.RequestHead}.
    @param wholeBody: the body held whole for a plugin, or None if it streams.
    @param filters: the request body's filters, or None.
    @return: C{(header pairs to add, chunked)}.
    """
    if wholeBody is not None:
        return [(b"Content-Length", b"%d" % (len(wholeBody),))], False
    if head.framing == h1.NO_BODY:
        return [], False
    if head.framing == h1.LENGTH and keepsLength(filters):
        return [(b"Content-Length", b"%d" % (head.length,))], False
    return [(b"Transfer-Encoding", b"chunked")], True


def upstreamRequestHead(request, head, path, hostHeader, wholeBody, filters, forwarding):
    """
    The request head sent upstream for a L{proxyd.message.Request} the
    plugins may have changed: Host first, then their headers (hop-by-hop
    and framing ones never come from them), the framing, the forwarding
    headers in reverse mode, and Via.

    @param head: the client's L{proxyd.h1heads.RequestHead}.
    @param forwarding: L{proxyd.forwarded.replaceForwarding}'s arguments
        after the headers (reverse mode), or None.
    @return: C{(bytes, upgrading, chunked)}.
    """
    headers, upgrading = requestWirePairs(request.headers, request.method)
    headers.insert(0, (b"Host", hostHeader))
    if upgrading:
        headers.append((b"Connection", b"upgrade"))
    framingHeaders, chunked = requestFraming(head, wholeBody, filters)
    headers += framingHeaders
    if forwarding is not None:
        headers = replaceForwarding(headers, *forwarding)
    addVia(headers, head.version)
    return h1.serializeHead(request.method + b" " + path + b" HTTP/1.1", headers), upgrading, chunked


def streamedResponseFraming(head, filters):
    """
    How a response whose body streams from upstream goes to the client.

    @param head: the upstream's L{proxyd.h1heads.ResponseHead}.
    @param filters: the response body's filters, or None.
    @return: C{(header pairs to add, framing, promised length or None)};
        the promised length is what length-keeping filters must deliver.
    """
    framing = head.framing
    if framing == h1.NO_BODY:
        return [(n, v) for (n, v) in head.headers if n.lower() in FRAMING], framing, None
    if framing == h1.LENGTH and keepsLength(filters):
        promised = head.length if filters else None
        return [(b"Content-Length", b"%d" % (head.length,))], framing, promised
    if framing == h1.LENGTH:
        return [], h1.CHUNKED, None
    return [], framing, None


def wholeResponseFraming(method, status, body):
    """
    A response held whole (a plugin's, or read whole for one).

    @return: C{(header pairs to add, the body to write)}.
    """
    headers = []
    if not (status in (204, 304) or 100 <= status < 200):
        headers.append((b"Content-Length", b"%d" % (len(body),)))
    return headers, b"" if bodyless(method, status) else body
