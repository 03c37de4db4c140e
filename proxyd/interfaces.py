# -*- test-case-name: tests.unit.test_pipeline -*-
"""
The plugin API: what a plugin provides, what its hooks may answer, and
no-op base classes so a plugin writes only the hooks it needs.

A plugin is an object providing L{twisted.plugin.IPlugin} and
L{IProxyPlugin}, found by C{twisted.plugin.getPlugins} in the bundled
C{proxyd_plugins} package, in every C{--plugin-path DIR} and in installed
packages that ship a C{proxyd_plugins/} directory.  C{--plugin NAME:k=v,...}
calls its C{makeRewriter} once at start-up; the rewriter it returns provides
one or more of L{IRequestRewriter}, L{IResponseRewriter}, L{IConnectPolicy}.

Every hook may return its answer or a L{Deferred} firing with it.  A hook
that raises (or whose Deferred fails) is logged with its traceback and the
plugin's name, and that request is answered 502 naming the plugin; a hook
that does not answer within C{--plugin-timeout} seconds is answered 504.
Rewriters are shared by every connection: keep per-request state in
C{flow.notes}, not on the rewriter.
"""

from zope.interface import Attribute, Interface, implementer


class PluginSettingsError(ValueError):
    """
    Raised by L{IProxyPlugin.makeRewriter} for settings it cannot use.  The
    message names the key and says why (C{"status: expected 301, 302, 307
    or 308, got '200'"}); proxyd prefixes the plugin's name and refuses to
    start.
    """


class _Sentinel:
    def __init__(self, name):
        self._name = name

    def __repr__(self):
        return self._name

    def __reduce__(self):
        return self._name


READ_BODY = _Sentinel("READ_BODY")
"""
Returned by C{requestHead}/C{responseHead}: give me the whole body.  proxyd
buffers it (up to C{--max-body-buffer}) and then calls C{requestBody} or
C{responseBody}.  A larger body is passed through untouched, with one
warning naming the plugin and the URL, and the body hook is not called.
"""

INTERCEPT = "intercept"
"""L{IConnectPolicy} answer: terminate TLS and run the HTTP inside through the plugins (mitm mode)."""

TUNNEL = "tunnel"
"""L{IConnectPolicy} answer: relay the tunnel's bytes blind; no plugin sees them."""


class Deny:
    """
    L{IConnectPolicy} answer: refuse the CONNECT with C{status} and a
    text/plain C{reason}.
    """

    __slots__ = ("status", "reason")

    def __init__(self, status=403, reason="denied by policy"):
        if not 400 <= int(status) <= 599:
            raise ValueError("a denial needs a 4xx or 5xx status, not {}".format(status))
        self.status = int(status)
        self.reason = reason

    def __repr__(self):
        return "Deny({}, {!r})".format(self.status, self.reason)

    def __eq__(self, other):
        return isinstance(other, Deny) and (self.status, self.reason) == (other.status, other.reason)

    def __hash__(self):
        return hash((self.status, self.reason))


class IProxyPlugin(Interface):
    """
    A plugin as C{twisted.plugin.getPlugins} finds it.  The object must also
    provide C{twisted.plugin.IPlugin}.  It is chosen with
    C{--plugin NAME[:key=value,...]}.
    """

    name = Attribute("str: what users type after --plugin; unique among the plugins found")
    description = Attribute("str: one line for 'twistd proxyd --list-plugins'")

    def makeRewriter(settings):
        """
        Build the rewriter for one C{--plugin} occurrence.

        @param settings: C{dict} of C{str} to C{str}, the C{key=value} pairs
            given after C{NAME:} (empty when there were none).
        @raise PluginSettingsError: for an unknown key or a bad value; the
            message names the key.  proxyd refuses to start and prints it.
        @return: a rewriter providing at least one of L{IRequestRewriter},
            L{IResponseRewriter}, L{IConnectPolicy}.  If it also provides
            C{twisted.application.service.IService}, it is started with the
            daemon and stopped (its Deferred waited for) when it stops.
        """


class IRequestRewriter(Interface):
    """Sees each request before it goes upstream, and may change or answer it."""

    def requestHead(flow):
        """
        The request head is read; no body byte has been read yet.  The hook
        may edit C{flow.request.method}, C{.url} and C{.headers}.  Framing
        headers (Content-Length, Transfer-Encoding) are proxyd's: edits to
        them are ignored.  Changing the URL's host or port sends the request
        there (and updates Host unless the hook set Host itself).

        @param flow: the L{proxyd.message.Flow}; C{flow.response} is None.
        @return: or a Deferred firing with:
            - C{None}: carry on; the body streams through untouched and is
              never buffered;
            - L{READ_BODY}: call L{requestBody} with the whole body
              (requests that have a body only);
            - an L{IBodyFilter}: stream the body through it;
            - a L{proxyd.message.Response}: answer with it.  Later request
              hooks and the upstream are skipped; every response hook still
              sees it.
        """

    def requestBody(flow, body):
        """
        Only after L{requestHead} returned L{READ_BODY}, with the whole body.

        @param body: C{bytes}.  C{flow.request.body} is the same bytes.
        @return: or a Deferred firing with: C{None} (keep the body),
            C{bytes} (the new body; proxyd sets Content-Length), or a
            L{proxyd.message.Response} (answer with it, as above).
        """


class IResponseRewriter(Interface):
    """Sees each response (from upstream or from a request hook) before the client does."""

    def responseHead(flow):
        """
        The response head is read; C{flow.response} is set and its body is
        not read yet.  The hook may edit C{flow.response.status},
        C{.reason} and C{.headers} (framing headers are proxyd's).

        @return: or a Deferred firing with: C{None} (carry on, the body
            streams untouched), L{READ_BODY} (call L{responseBody} with the
            whole body), an L{IBodyFilter} (stream the body through it), or a L{proxyd.message.Response} (send it instead;
            the upstream's body is dropped; later response hooks see the new
            response).  Responses without a body (HEAD, 204, 304) never get
            a body hook.
        """

    def responseBody(flow, body):
        """
        Only after L{responseHead} returned L{READ_BODY}.

        @param body: C{bytes}, still content-coded (gzip stays gzip).
        @return: or a Deferred firing with: C{None} (keep), C{bytes} (the
            new body; proxyd fixes the framing), or a Response (send it
            instead).
        """


class IBodyFilter(Interface):
    """
    A body streamed through a plugin chunk by chunk, never held whole:
    returned by C{requestHead} or C{responseHead} instead of READ_BODY.
    Synchronous on purpose: it runs as the bytes arrive, so backpressure
    passes through it.
    """

    keepsLength = Attribute(
        "bool: True if the filter returns exactly as many bytes as it is given "
        "(an observer); proxyd then keeps the message's Content-Length.  False: "
        "proxyd re-frames the body as chunked (close-delimited for HTTP/1.0)."
    )

    def filterChunk(data):
        """
        @param data: the next C{bytes} of the body (still content-coded).
        @return: the C{bytes} to send on now (C{b""} holds everything back).
        """

    def filterEnd():
        """
        The body is complete.  Called once per message, right after the head
        for a message without a body.  A message cut short never gets it.

        @return: C{bytes} still to send (what the filter held back).
        """


class IConnectPolicy(Interface):
    """Decides what happens to a CONNECT tunnel."""

    def connectDecision(target):
        """
        Asked for every CONNECT, before proxyd connects upstream, with
        C{target.sni} None; in mitm mode, when no policy had an opinion then,
        asked again once the client's TLS ClientHello names the server
        (C{target.sni} set).  C{--passthrough} is asked first; then the
        plugins in C{--plugin} order; the first answer that is not None wins.

        @param target: a L{proxyd.message.ConnectTarget}.
        @return: or a Deferred firing with: L{INTERCEPT} (mitm mode: read
            the HTTP inside; in forward mode the same as TUNNEL),
            L{TUNNEL} (relay blind), a L{Deny} (refuse with its status; after
            the ClientHello, every request inside is answered with it), or
            None (no opinion).
        """


@implementer(IRequestRewriter)
class RequestRewriter:
    """No-op request hooks: subclass and override what you need."""

    def requestHead(self, flow):
        return None

    def requestBody(self, flow, body):
        return None


@implementer(IResponseRewriter)
class ResponseRewriter:
    """No-op response hooks: subclass and override what you need."""

    def responseHead(self, flow):
        return None

    def responseBody(self, flow, body):
        return None


@implementer(IRequestRewriter, IResponseRewriter)
class Rewriter(RequestRewriter, ResponseRewriter):
    """No-op request and response hooks."""


@implementer(IBodyFilter)
class BodyFilter:
    """A pass-through filter (an observer): override C{filterChunk}/C{filterEnd}."""

    keepsLength = True

    def filterChunk(self, data):
        return data

    def filterEnd(self):
        return b""


@implementer(IConnectPolicy)
class ConnectPolicy:
    """A connect policy with no opinion."""

    def connectDecision(self, target):
        return None
