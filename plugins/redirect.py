# -*- test-case-name: tests.unit.test_plugin_redirect -*-
"""
The C{redirect} plugin: map a URL prefix to another one, either by
telling the client to go there (a 3xx with Location) or transparently, by
sending the request to the new origin without the client knowing.

Moving an API to a staging host, or pointing a page at a local build,
is a prefix swap: C{from=http://old.test/api/,to=http://localhost:8080/v2/}
turns C{http://old.test/api/users?id=1} into
C{http://localhost:8080/v2/users?id=1}.  Scheme and host are compared
without regard to case and a default port (C{:80}, C{:443}) is the same
as none; the path is compared exactly.

    --plugin 'redirect:from=http://old.test/api/,to=https://new.test/api/,status=308'

An https:// C{from} only matches in mitm mode: in forward mode proxyd never
sees the requests inside a CONNECT tunnel.
"""

import attr
from twisted.plugin import IPlugin
from zope.interface import implementer

from proxyd.interfaces import IProxyPlugin, PluginSettingsError, RequestRewriter
from proxyd.message import Response
from proxyd.pluginsettings import checkKeys, choice

STATUSES = ("302", "301", "307", "308", "transparent")
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}


def _split(url):
    """
    An absolute URL to (scheme, authority, rest), scheme and authority
    lower case, a default port dropped, C{rest} starting with C{/} (added
    when the URL has no path), or None when C{url} is not absolute.
    """
    scheme, sep, remainder = url.partition("://")
    if not sep:
        return None
    end = len(remainder)
    for stop in "/?#":
        i = remainder.find(stop)
        if 0 <= i < end:
            end = i
    scheme = scheme.lower()
    authority = remainder[:end].lower()
    rest = remainder[end:]
    default = _DEFAULT_PORTS.get(scheme)
    if default and authority.endswith(default):
        authority = authority[: -len(default)]
    elif authority.endswith(":"):
        authority = authority[:-1]
    if not rest.startswith("/"):
        rest = "/" + rest
    return scheme, authority, rest


def _normalize(url):
    """The form URLs are compared in; see L{_split}."""
    scheme, authority, rest = _split(url)
    return "{}://{}{}".format(scheme, authority, rest)


def _prefix(settings, key):
    """A checked, normalized absolute http:// or https:// URL prefix."""
    value = settings[key].strip()
    for c in value:
        if c <= " " or c == "\x7f":
            raise PluginSettingsError("{}: {!r} has a space or a control character".format(key, value))
    parts = _split(value)
    if parts is None or parts[0] not in _DEFAULT_PORTS:
        raise PluginSettingsError("{}: expected an http:// or https:// URL prefix, got {!r}".format(key, value))
    scheme, authority, rest = parts
    if "@" in authority:
        raise PluginSettingsError(
            "{}: {!r} has user information; give only scheme, host, port and path".format(key, value)
        )
    host, port = authority, ""
    if authority.startswith("["):
        close = authority.find("]")
        host, port = authority[: close + 1], authority[close + 1:]
        if close < 0 or (port and not port.startswith(":")):
            raise PluginSettingsError("{}: {!r} has a bad IPv6 host".format(key, value))
    elif ":" in authority:
        host, _, port = authority.partition(":")
        port = ":" + port
    if host in ("", "[]"):
        raise PluginSettingsError("{}: {!r} has no host".format(key, value))
    if port and not (port[1:].isdigit() and 0 < int(port[1:]) < 65536):
        raise PluginSettingsError("{}: {!r} has a bad port".format(key, value))
    if "#" in rest:
        raise PluginSettingsError("{}: {!r} has a fragment (#), which requests never carry".format(key, value))
    return "{}://{}{}".format(scheme, authority, rest)


@attr.s(frozen=True)
class _Redirect(RequestRewriter):
    """Rewrites requests whose URL starts with C{source} to start with C{target}."""

    name = "redirect"

    source = attr.ib()
    target = attr.ib()
    status = attr.ib()  # an int, or None for transparent

    def newURL(self, url):
        """The URL C{url} (C{bytes}) maps to (C{bytes}), or None."""
        text = url.decode("latin-1")
        if _split(text) is None:
            return None
        text = _normalize(text)
        if not text.startswith(self.source):
            return None
        return (self.target + text[len(self.source):]).encode("latin-1")

    def requestHead(self, flow):
        location = self.newURL(flow.request.url)
        if location is None:
            return None
        if self.status is None:
            flow.request.url = location
            return None
        return Response.redirect(location, self.status)


@implementer(IPlugin, IProxyPlugin)
class RedirectPlugin:
    """Map a URL prefix to another origin, by a 3xx or transparently."""

    name = "redirect"
    description = "map a URL prefix to another: answer with a 3xx, or send the request there transparently"

    def makeRewriter(self, settings):
        """
        @param settings: C{from=PREFIX}, C{to=PREFIX} (absolute http:// or
            https:// URLs), C{status=302|301|307|308|transparent}.
        """
        checkKeys(settings, {"from", "to", "status"}, required=("from", "to"))
        source = _prefix(settings, "from")
        target = _prefix(settings, "to")
        status = choice(settings, "status", STATUSES, "302")
        if source.endswith("/") != target.endswith("/"):
            raise PluginSettingsError(
                "to: must end with '/' exactly when from does ({} and {}), "
                "or the rest of the path would be joined wrongly".format(settings["from"], settings["to"])
            )
        if status != "transparent" and target.startswith(source):
            raise PluginSettingsError(
                "to: {} starts with from, so the client would be redirected again and again; "
                "use status=transparent".format(settings["to"])
            )
        return _Redirect(source, target, None if status == "transparent" else int(status))


redirect = RedirectPlugin()
