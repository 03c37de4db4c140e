# -*- test-case-name: tests.unit.test_plugin_headers -*-
"""
The C{headers} plugin: set, add or remove request and response headers,
for every host or for the hosts matching a glob.

Header edits are the commonest rewrite (a debug header, a forced
C{Cache-Control}, dropping C{Cookie} for a host) and need no body, so this
plugin never makes proxyd buffer one.  Each C{--plugin headers:...}
occurrence carries one set or add per direction; give the plugin several
times for more.  Within one occurrence the edits run remove, then set,
then add.

    --plugin 'headers:host=*.example.com,set-request=X-Debug:1,remove-response=Set-Cookie'

A value whose comma is followed by C{word=} must write it C{\\,}
(C{set-response=Cache-Control:no-cache\\, max-age=0}), or C{--plugin}
reads C{max-age} as a setting.

Framing and hop-by-hop headers are proxyd's own and are refused.
"""

import attr
from twisted.plugin import IPlugin
from zope.interface import implementer

from proxyd.headers import FRAMING, HOP_BY_HOP
from proxyd.interfaces import IProxyPlugin, PluginSettingsError, RequestRewriter, ResponseRewriter
from proxyd.pluginsettings import checkKeys, hostGlobs, matchesHost

_DIRECTIONS = ("request", "response")
_ACTIONS = ("set", "add", "remove")
_EDIT_KEYS = tuple("{}-{}".format(action, direction) for direction in _DIRECTIONS for action in _ACTIONS)
_KEYS = frozenset(_EDIT_KEYS) | {"host"}

# RFC 9110 section 5.6.2: token = 1*tchar.
_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _checkName(key, name, direction, action):
    """Refuse a name that is not a token, or that proxyd manages itself."""
    if not name:
        raise PluginSettingsError("{}: expected a header name".format(key))
    if not all(c in _TCHAR for c in name):
        raise PluginSettingsError("{}: {!r} is not a header name".format(key, name))
    lower = name.lower().encode("ascii")
    if lower in FRAMING:
        raise PluginSettingsError("{}: {} is framing; proxyd sets it for the body it sends".format(key, name))
    if lower in HOP_BY_HOP:
        raise PluginSettingsError("{}: {} is hop-by-hop; proxyd manages it".format(key, name))
    if lower == b"host" and direction == "request" and action != "set":
        raise PluginSettingsError(
            "{}: a request has exactly one Host; change it with set-request=Host:VALUE".format(key)
        )
    return name.encode("ascii")


def _checkValue(key, value):
    """Refuse control characters (CR, LF, NUL and the rest; a tab is allowed)."""
    value = value.strip(" \t")
    for c in value:
        if (c < " " and c != "\t") or c == "\x7f":
            raise PluginSettingsError("{}: the value has a control character {!r}".format(key, c))
    return value.encode("utf-8")


def _nameValue(settings, key, direction, action):
    """C{NAME:VALUE} to C{((name, value),)}; C{()} when the key is absent."""
    if key not in settings:
        return ()
    name, sep, value = settings[key].partition(":")
    if not sep:
        raise PluginSettingsError("{}: expected NAME:VALUE, got {!r}".format(key, settings[key]))
    return ((_checkName(key, name.strip(), direction, action), _checkValue(key, value)),)


def _names(settings, key, direction):
    """C{NAME|NAME} to a tuple of names; C{()} when the key is absent."""
    if key not in settings:
        return ()
    names = [name.strip() for name in settings[key].split("|") if name.strip()]
    if not names:
        raise PluginSettingsError("{}: expected NAME or NAME|NAME".format(key))
    return tuple(_checkName(key, name, direction, "remove") for name in names)


@attr.s(frozen=True)
class _Edits:
    """The edits for one direction: names to remove, (name, value) to set and to add."""

    removals = attr.ib(default=())
    replacements = attr.ib(default=())
    additions = attr.ib(default=())

    @classmethod
    def fromSettings(cls, settings, direction):
        return cls(
            removals=_names(settings, "remove-" + direction, direction),
            replacements=_nameValue(settings, "set-" + direction, direction, "set"),
            additions=_nameValue(settings, "add-" + direction, direction, "add"),
        )

    def __bool__(self):
        return bool(self.removals or self.replacements or self.additions)

    def apply(self, headers):
        """Edit a L{twisted.web.http_headers.Headers} in place: remove, then set, then add."""
        for name in self.removals:
            headers.removeHeader(name)
        for name, value in self.replacements:
            headers.setRawHeaders(name, [value])
        for name, value in self.additions:
            headers.addRawHeader(name, value)


@attr.s(frozen=True)
class _HeaderEdits:
    """What the rewriters share: the host globs and the edits per direction."""

    name = "headers"

    hosts = attr.ib()
    request = attr.ib()
    response = attr.ib()


class _RequestHeaders(_HeaderEdits, RequestRewriter):
    """Edits request headers only: response hooks are never called."""

    def requestHead(self, flow):
        if not self.hosts or matchesHost(self.hosts, flow.request.host):
            self.request.apply(flow.request.headers)
        return None


class _ResponseHeaders(_HeaderEdits, ResponseRewriter):
    """Edits response headers only: request hooks are never called."""

    def responseHead(self, flow):
        if not self.hosts or matchesHost(self.hosts, flow.request.host):
            self.response.apply(flow.response.headers)
        return None


class _BothHeaders(_RequestHeaders, _ResponseHeaders):
    """Edits request and response headers."""


@implementer(IPlugin, IProxyPlugin)
class HeadersPlugin:
    """Set, add or remove request and response headers, by host glob."""

    name = "headers"
    description = "set, add or remove request/response headers, optionally only for host globs"

    def makeRewriter(self, settings):
        """
        @param settings: C{host=GLOB|GLOB}, C{set-request=NAME:VALUE},
            C{add-request=NAME:VALUE}, C{remove-request=NAME|NAME} and the
            same three with C{-response}; at least one edit.
        """
        checkKeys(settings, _KEYS)
        hosts = hostGlobs(settings, "host")
        if "host" in settings and not hosts:
            raise PluginSettingsError("host: expected GLOB or GLOB|GLOB (leave it out for every host)")
        request = _Edits.fromSettings(settings, "request")
        response = _Edits.fromSettings(settings, "response")
        if request and response:
            cls = _BothHeaders
        elif request:
            cls = _RequestHeaders
        elif response:
            cls = _ResponseHeaders
        else:
            raise PluginSettingsError("{}: give at least one".format(", ".join(_EDIT_KEYS)))
        return cls(hosts, request, response)


headers = HeadersPlugin()
