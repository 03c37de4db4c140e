# -*- test-case-name: tests.unit.test_plugin_replace -*-
"""
C{replace}: a regular-expression replacement in text bodies.

Why a plugin and not a filter on bytes: the text a user wants to change
is usually gzip-compressed and in some charset, so a byte pattern would
never match.  This plugin asks for the whole body only when the message
is text (the head tells: Content-Type, Content-Encoding, status), takes
the content coding off with a cap on the decoded size (a gzip bomb costs
at most C{max-decoded} bytes), decodes the charset the message declares,
runs C{re.subn}, and puts everything back the way it came: same charset,
same content coding.  When nothing matched, or anything about the body
is not what it claims to be, the body goes on byte for byte as it came.

Settings, after C{--plugin replace:}::

    pattern=REGEX            required; Python re syntax, on the decoded text
    replacement=TEXT         default empty; \\1 and \\g<name> allowed
    direction=response|request|both      default response
    host=GLOB|GLOB           only these hosts (default: every host)
    url=GLOB|GLOB            only these URLs (default: every URL)
    types=TYPE|TYPE          content types instead of the default text set
    max-decoded=SIZE         cap on the decoded body, default 64MiB

Give the plugin several times for several replacements; they run in
C{--plugin} order.
"""

import codecs
import fnmatch
import re

import attr
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from proxyd.coding import DECODABLE, DecodeError, DecodedTooBig, contentType, decodeContent, encodeContent
from proxyd.interfaces import READ_BODY, IProxyPlugin, IRequestRewriter, IResponseRewriter, PluginSettingsError
from proxyd.pluginsettings import checkKeys, choice, hostGlobs, matchesHost, matchesURL, regex, size, urlGlobs

DEFAULT_TYPES = (
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "application/xml",
    "application/*+xml",
)

DEFAULT_MAX_DECODED = 64 * 1024 * 1024

_KEYS = ("pattern", "replacement", "direction", "host", "url", "types", "max-decoded")

_MEDIA_TYPE = re.compile(r"^[a-z0-9*!#$&^_.+-]+/[a-z0-9*!#$&^_.+-]+$")

# Headers that vouch for the exact bytes of the body; wrong once it changes.
_INTEGRITY_HEADERS = (b"Content-MD5", b"Digest", b"Content-Digest", b"Repr-Digest")

# Codecs whose strict decoding always encodes back to the same bytes.
_EXACT_CODECS = frozenset(["utf-8", "iso8859-1", "ascii"])

# flow.notes key shared by every replace rewriter: what was already logged.
_LOGGED = "replace.logged"


class _LeaveAlone(Exception):
    """The body cannot be rewritten faithfully; send it as it came."""

    def __init__(self, reason, level="info"):
        Exception.__init__(self, reason)
        self.reason = reason
        self.level = level


class _TooBig(_LeaveAlone):
    pass


def _mediaTypes(settings):
    if "types" not in settings:
        return DEFAULT_TYPES
    types = []
    for part in settings["types"].split("|"):
        part = part.strip().lower()
        if not part:
            continue
        if not _MEDIA_TYPE.match(part):
            raise PluginSettingsError("types: {!r} is not a content type like text/* or application/json".format(part))
        types.append(part)
    if not types:
        raise PluginSettingsError("types: give at least one content type, like text/html|application/json")
    return tuple(types)


def _template(pattern, replacement):
    """Refuse a replacement C{re} cannot use with C{pattern} (bad escape, unknown group)."""
    try:
        pattern.subn(replacement, "")
    except (re.error, IndexError) as e:
        raise PluginSettingsError("replacement: bad replacement {!r}: {}".format(replacement, e))
    return replacement


def _codings(message):
    """The content codings applied, first applied first; identity left out."""
    codings = []
    for value in message.headers.getRawHeaders(b"content-encoding", []):
        for coding in value.decode("latin-1").split(","):
            coding = coding.strip().lower()
            if coding and coding != "identity":
                codings.append(coding)
    return codings


def _unsupported(codings):
    for coding in codings:
        if coding not in DECODABLE:
            return coding
    return None


def _decode(coding, data, limit):
    """Take one content coding off; returns (bytes, how to put it back)."""
    try:
        return decodeContent(coding, data, limit)
    except DecodedTooBig:
        raise _TooBig("decodes to more than max-decoded ({} bytes)".format(limit))
    except DecodeError as e:
        raise _LeaveAlone(str(e))


@attr.s(frozen=True)
class _Replace:
    """
    What the request and response hooks share: the settings, and turning
    a whole body into its replaced form.  The subclasses below provide
    only the interfaces their C{direction} asks for, so the pipeline never
    calls a hook that would do nothing.
    """

    name = "replace"

    pattern = attr.ib()
    replacement = attr.ib()
    hosts = attr.ib(default=())
    urls = attr.ib(default=())
    types = attr.ib(default=DEFAULT_TYPES)
    maxDecoded = attr.ib(default=DEFAULT_MAX_DECODED)

    _log = Logger()

    def _wanted(self, flow, message):
        """Whether to ask for this message's body: filters, type, coding."""
        request = flow.request
        if self.hosts and not matchesHost(self.hosts, request.host):
            return False
        if self.urls and not matchesURL(self.urls, request.url):
            return False
        mediaType, _ = contentType(message)
        if not mediaType or not any(fnmatch.fnmatchcase(mediaType, t) for t in self.types):
            return False
        coding = _unsupported(_codings(message))
        if coding is not None:
            self._logOnce(flow, "info", "cannot decode Content-Encoding {}".format(coding))
            return False
        return True

    def _head(self, flow, message):
        return READ_BODY if self._wanted(flow, message) else None

    def _body(self, flow, message, body):
        """
        The replaced body, or None to keep C{body} as it is.  Integrity
        headers are dropped from C{message} when the body changes.
        """
        if not body:
            return None
        try:
            newBody = self._replace(message, body)
        except _LeaveAlone as e:
            self._logOnce(flow, e.level, e.reason)
            return None
        if newBody is None:
            return None
        for name in _INTEGRITY_HEADERS:
            message.headers.removeHeader(name)
        return newBody

    def _replace(self, message, body):
        codings = _codings(message)
        coding = _unsupported(codings)
        if coding is not None:
            raise _LeaveAlone("cannot decode Content-Encoding {}".format(coding))
        undo = []
        data = body
        for coding in reversed(codings):
            data, wbits = _decode(coding, data, self.maxDecoded)
            undo.append(wbits)
        if len(data) > self.maxDecoded:
            raise _TooBig("body is larger than max-decoded ({} bytes)".format(self.maxDecoded))

        _, charset = contentType(message)
        charset = charset or "utf-8"
        try:
            codec = codecs.lookup(charset).name
            original = data.decode(charset)
        except LookupError:
            raise _LeaveAlone("unknown charset {!r}".format(charset))
        except ValueError:
            raise _LeaveAlone("body is not valid {}".format(charset))

        text, count = self.pattern.subn(self.replacement, original)
        if not count:
            return None
        if codec not in _EXACT_CODECS and original.encode(charset, "replace") != data:
            # Stateful or escaping codecs (utf-16 byte order, ISO-2022-*,
            # unicode_escape...): what did not match would change too.
            raise _LeaveAlone("{} does not give back the same bytes".format(charset))
        try:
            data = text.encode(charset)
        except ValueError:
            raise _LeaveAlone("the replaced text cannot be written in {}".format(charset), "warn")
        for wbits in reversed(undo):
            data = encodeContent(data, wbits)
        return data

    def _logOnce(self, flow, level, reason):
        logged = flow.notes.setdefault(_LOGGED, set())
        if reason in logged:
            return
        logged.add(reason)
        emit = self._log.warn if level == "warn" else self._log.info
        emit(
            "replace: {method} {url}: {reason}; body left untouched",
            method=flow.request.method.decode("latin-1"),
            url=flow.request.url.decode("latin-1"),
            reason=reason,
        )


@implementer(IResponseRewriter)
class _ResponseReplace(_Replace):
    """Replaces in response bodies."""

    def responseHead(self, flow):
        if flow.response.status == 206:
            # A byte range of the body: the replaced text would not fit the range.
            return None
        return self._head(flow, flow.response)

    def responseBody(self, flow, body):
        return self._body(flow, flow.response, body)


@implementer(IRequestRewriter)
class _RequestReplace(_Replace):
    """Replaces in request bodies."""

    def requestHead(self, flow):
        return self._head(flow, flow.request)

    def requestBody(self, flow, body):
        return self._body(flow, flow.request, body)


@implementer(IRequestRewriter, IResponseRewriter)
class _BothReplace(_RequestReplace, _ResponseReplace):
    """Replaces in request and response bodies."""


_DIRECTIONS = {"response": _ResponseReplace, "request": _RequestReplace, "both": _BothReplace}


@implementer(IPlugin, IProxyPlugin)
class ReplacePlugin:
    name = "replace"
    description = "regex replace in text bodies (text/*, JSON, JavaScript), gzip-decoded when needed"

    def makeRewriter(self, settings):
        checkKeys(settings, _KEYS, required=("pattern",))
        pattern = regex(settings, "pattern")
        replacement = _template(pattern, settings.get("replacement", ""))
        direction = choice(settings, "direction", ("response", "request", "both"), "response")
        maxDecoded = size(settings, "max-decoded", DEFAULT_MAX_DECODED)
        if maxDecoded < 1:
            raise PluginSettingsError("max-decoded: must be at least 1 byte")
        return _DIRECTIONS[direction](
            pattern=pattern,
            replacement=replacement,
            hosts=hostGlobs(settings, "host"),
            urls=urlGlobs(settings, "url"),
            types=_mediaTypes(settings),
            maxDecoded=maxDecoded,
        )


replace = ReplacePlugin()
