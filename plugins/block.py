# -*- test-case-name: tests.unit.test_plugin_block -*-
"""
The C{block} plugin: answer requests to some hosts or URLs with a 403 (or
another error status) and a short text body, and refuse CONNECTs to those
hosts.

Blocking is a request hook that answers without going upstream, so the
blocked server is never contacted; the response hooks after it still see
the answer.  A CONNECT is denied by host (its name or, in mitm mode, the
TLS server name); URL globs can only block what proxyd reads inside, that
is plain http:// requests and, in mitm mode, intercepted https:// ones.

    --plugin 'block:hosts=ads.example|*.tracker.test,urls=*://*/pixel.gif'
"""

import attr
from twisted.plugin import IPlugin
from zope.interface import implementer

from proxyd.errors import statusPhrase
from proxyd.interfaces import ConnectPolicy, Deny, IProxyPlugin, PluginSettingsError, RequestRewriter
from proxyd.message import Response
from proxyd.pluginsettings import checkKeys, hostGlobs, integer, matchesHost, matchesURL, urlGlobs

DEFAULT_MESSAGE = "blocked by proxyd policy"


@attr.s(frozen=True)
class _Block(RequestRewriter, ConnectPolicy):
    """Answers matching requests and denies matching CONNECTs."""

    name = "block"

    hosts = attr.ib()
    urls = attr.ib()
    status = attr.ib()
    message = attr.ib()

    def requestHead(self, flow):
        request = flow.request
        if matchesHost(self.hosts, request.host) or matchesURL(self.urls, request.url):
            return Response.text(
                self.status,
                "proxyd: {} {}: {} ({})\n".format(
                    self.status,
                    statusPhrase(self.status).decode("ascii"),
                    self.message,
                    request.url.decode("latin-1"),
                ),
            )
        return None

    def connectDecision(self, target):
        if matchesHost(self.hosts, target.host) or (target.sni and matchesHost(self.hosts, target.sni)):
            return Deny(self.status, self.message)
        return None


@implementer(IPlugin, IProxyPlugin)
class BlockPlugin:
    """Error responses for host or URL globs, and denied CONNECTs for the hosts."""

    name = "block"
    description = "answer 403 for host or URL globs and deny CONNECTs to the hosts"

    def makeRewriter(self, settings):
        """
        @param settings: C{hosts=GLOB|GLOB} and/or C{urls=GLOB|GLOB} (at
            least one), C{status=} (4xx or 5xx, default 403), C{message=}.
        """
        checkKeys(settings, {"hosts", "urls", "status", "message"})
        hosts = hostGlobs(settings, "hosts")
        urls = urlGlobs(settings, "urls")
        for key, globs in (("hosts", hosts), ("urls", urls)):
            if key in settings and not globs:
                raise PluginSettingsError("{}: expected GLOB or GLOB|GLOB".format(key))
        if not hosts and not urls:
            raise PluginSettingsError("hosts, urls: at least one is required")
        status = integer(settings, "status", 403, 400, 599)
        message = settings.get("message", DEFAULT_MESSAGE).strip()
        if not message:
            raise PluginSettingsError("message: must not be empty (leave it out for {!r})".format(DEFAULT_MESSAGE))
        for c in message:
            if c < " " or c == "\x7f":
                raise PluginSettingsError("message: must be one line without control characters, got {!r}".format(c))
        return _Block(hosts, urls, status, message)


block = BlockPlugin()
