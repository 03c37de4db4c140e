# -*- test-case-name: tests.unit.test_plugin_har -*-
"""
C{--plugin har:file=PATH}: record every flow to a HAR 1.2 file, the format
browser developer tools import, so a capture made at the proxy can be
read with the tools people already know.

It only observes: bodies stream through a pass-through L{IBodyFilter} that
keeps a copy of their first C{max-body} bytes, so nothing is buffered,
delayed or reframed.  An entry is written when its response ends.  The file
is valid JSON after every entry (and after a SIGTERM): each entry is
written over the closing brackets, which are written again after it.
"""

import codecs
import json
import os
import zlib
from base64 import b64encode
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from itertools import count
from urllib.parse import parse_qsl, urlsplit

from twisted.application.service import IService, Service
from twisted.logger import Logger
from twisted.plugin import IPlugin
from zope.interface import implementer

from proxyd import __version__
from proxyd.interfaces import (
    BodyFilter,
    IBodyFilter,
    IProxyPlugin,
    IRequestRewriter,
    IResponseRewriter,
    PluginSettingsError,
    Rewriter,
)
from proxyd.pluginsettings import checkKeys, hostGlobs, matchesHost, size

DEFAULT_MAX_BODY = 64 * 1024

_HEAD = (
    '{"log": {"version": "1.2", "creator": {"name": "proxyd", "version": '
    + json.dumps(__version__)
    + '}, "pages": [], "entries": ['
).encode("ascii")
_TAIL = b"\n]}}\n"

_noteKeys = count(1)


@implementer(IBodyFilter)
class _Capture(BodyFilter):
    """
    Passes a body through unchanged, keeping its first C{limit} bytes and
    counting all of them; calls C{ended(self)} once at the end.

    @ivar size: the body's length so far.
    @ivar ended: whether the body is complete.
    """

    keepsLength = True

    def __init__(self, limit, onEnd):
        self.limit = limit
        self._onEnd = onEnd
        self._kept = []
        self._keptSize = 0
        self.size = 0
        self.ended = False

    def filterChunk(self, data):
        self.size += len(data)
        room = self.limit - self._keptSize
        if room > 0 and data:
            piece = bytes(data[:room])
            self._kept.append(piece)
            self._keptSize += len(piece)
        return data

    def filterEnd(self):
        if not self.ended:
            self.ended = True
            self._onEnd(self)
        return b""

    @property
    def data(self):
        """The bytes kept: the whole body unless L{truncated}."""
        return b"".join(self._kept)

    @property
    def truncated(self):
        return self.size > self._keptSize


class _FlowRecord:
    """What the recorder knows of one flow so far (kept in C{flow.notes})."""

    __slots__ = ("begun", "requestEnded", "responseBegun", "request", "response")

    def __init__(self, begun):
        self.begun = begun
        self.requestEnded = None
        self.responseBegun = None
        self.request = None
        self.response = None


@implementer(IRequestRewriter, IResponseRewriter, IService)
class HarRecorder(Rewriter, Service):
    """
    The C{har} rewriter, and the service owning the file: it is opened
    (and started afresh) by L{startService} and closed by L{stopService}.
    Entries completing while it is not running are dropped.
    """

    _log = Logger()

    def __init__(self, path, maxBody=DEFAULT_MAX_BODY, hosts=(), clock=None):
        """
        @param path: the HAR file (made absolute, so a later chdir is harmless).
        @param maxBody: bytes of each body recorded; 0 records none.
        @param hosts: host globs (L{hostGlobs}); empty records every host.
        @param clock: has C{seconds()}, for timings; the reactor by default.
        """
        if clock is None:
            from twisted.internet import reactor as clock
        self.path = os.path.abspath(path)
        self.maxBody = maxBody
        self.hosts = tuple(hosts)
        self.clock = clock
        self._file = None
        self._end = 0
        self._entries = 0
        self._failing = False
        self._noteKey = "har#{}".format(next(_noteKeys))

    # The service

    def startService(self):
        Service.startService(self)
        try:
            existed = os.path.getsize(self.path) > 0
        except OSError:
            existed = False
        self._file = open(self.path, "wb")
        if existed:
            self._log.info("HAR file {path} already existed; starting it afresh", path=self.path)
        self._file.write(_HEAD + _TAIL)
        self._file.flush()
        self._end = len(_HEAD)
        self._entries = 0
        self._failing = False

    def stopService(self):
        Service.stopService(self)
        stream, self._file = self._file, None
        if stream is not None:
            try:
                stream.close()
            except OSError as e:
                self._log.error("Cannot close the HAR file {path}: {error}", path=self.path, error=str(e))
        return None

    # The hooks

    def requestHead(self, flow):
        if self.hosts and not matchesHost(self.hosts, flow.request.host):
            flow.notes[self._noteKey] = None
            return None
        record = flow.notes[self._noteKey] = _FlowRecord(self.clock.seconds())
        record.request = _Capture(self.maxBody, lambda capture: self._requestEnded(record))
        return record.request

    def _requestEnded(self, record):
        record.requestEnded = self.clock.seconds()

    def responseHead(self, flow):
        key = self._noteKey
        if key in flow.notes:
            record = flow.notes[key]
            if record is None:
                return None
        elif self.hosts and not matchesHost(self.hosts, flow.request.host):
            return None
        else:
            # An earlier plugin answered before our requestHead ran.
            record = flow.notes[key] = _FlowRecord(self.clock.seconds())
        record.responseBegun = self.clock.seconds()
        record.response = _Capture(self.maxBody, lambda capture: self._responseEnded(flow, record))
        return record.response

    def _responseEnded(self, flow, record):
        now = self.clock.seconds()
        flow.notes.pop(self._noteKey, None)
        if self._file is None:
            return
        try:
            entry = _entry(flow, record, now)
            self._write(json.dumps(entry, ensure_ascii=False).encode("utf-8", "backslashreplace"))
        except Exception:
            # Recording must never break the exchange it records.
            self._log.failure(
                "Cannot record {method} {url} to the HAR file {path}",
                method=flow.request.method.decode("latin-1"),
                url=flow.request.url.decode("latin-1"),
                path=self.path,
            )

    def _write(self, entry):
        """Write C{entry} over the closing brackets, then the brackets again."""
        stream = self._file
        data = (b",\n" if self._entries else b"\n") + entry
        try:
            stream.seek(self._end)
            stream.write(data + _TAIL)
            stream.flush()
        except (OSError, ValueError) as e:
            self._repair(stream)
            if not self._failing:
                self._failing = True
                self._log.error("Cannot write the HAR file {path}: {error}", path=self.path, error=str(e))
            return
        self._end += len(data)
        self._entries += 1
        self._failing = False

    def _repair(self, stream):
        """After a failed write, try to leave the file ending as it did."""
        try:
            stream.seek(self._end)
            stream.write(_TAIL)
            stream.truncate()
            stream.flush()
        except (OSError, ValueError):
            pass


@implementer(IPlugin, IProxyPlugin)
class HarPlugin:
    name = "har"
    description = "record flows to a HAR 1.2 file (file=PATH, max-body=SIZE, host=GLOB|...)"

    def makeRewriter(self, settings):
        checkKeys(settings, ("file", "max-body", "host"), required=("file",))
        path = _checkWritable(settings["file"])
        maxBody = size(settings, "max-body", DEFAULT_MAX_BODY)
        hosts = hostGlobs(settings, "host")
        from twisted.internet import reactor

        return HarRecorder(path, maxBody, hosts, reactor)


har = HarPlugin()


def _checkWritable(path):
    """The absolute path, if the file can be created or rewritten there."""
    path = os.path.abspath(os.path.expanduser(path))
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise PluginSettingsError("file: directory {} does not exist".format(directory))
    if os.path.isdir(path):
        raise PluginSettingsError("file: {} is a directory".format(path))
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise PluginSettingsError("file: {} is not writable".format(path))
    elif not os.access(directory, os.W_OK | os.X_OK):
        raise PluginSettingsError("file: cannot create files in {}".format(directory))
    return path


# Building an entry


def _entry(flow, record, ended):
    request, response = flow.request, flow.response
    responseBegun = record.responseBegun
    requestEnded = record.requestEnded
    if requestEnded is None or requestEnded > responseBegun:
        requestEnded = record.begun
    send = _ms(requestEnded - record.begun)
    wait = _ms(responseBegun - requestEnded)
    receive = _ms(ended - responseBegun)
    entry = {
        "startedDateTime": _isoTime(flow.started),
        "time": round(send + wait + receive, 3),
        "request": _request(request, record.request),
        "response": _response(response, record.response),
        "cache": {},
        "timings": {
            "blocked": -1,
            "dns": -1,
            "connect": -1,
            "ssl": -1,
            "send": send,
            "wait": wait,
            "receive": receive,
        },
        "_proxyd": {"flow": flow.id, "client": flow.client, "mode": flow.mode},
    }
    return entry


def _request(request, capture):
    url = request.url.decode("latin-1")
    har = {
        "method": request.method.decode("latin-1"),
        "url": url,
        "httpVersion": "HTTP/" + request.version.decode("latin-1"),
        "cookies": _requestCookies(request.headers),
        "headers": _headers(request.headers),
        "queryString": _pairs(urlsplit(request.url).query),
        "headersSize": -1,
        "bodySize": capture.size if capture is not None and capture.ended else -1,
    }
    if capture is not None and capture.size:
        mimeType = _header(request.headers, b"content-type")
        form = mimeType.split(";")[0].strip().lower() == "application/x-www-form-urlencoded"
        # HAR 1.2 calls params and text exclusive, yet lists both without
        # "optional"; browsers write both, and some readers insist on them.
        postData = {"mimeType": mimeType, "params": _pairs(capture.data) if form and not capture.truncated else []}
        _bodyText(postData, capture, mimeType, capture.data, base64Field="_encoding")
        postData.setdefault("text", "")
        har["postData"] = postData
    return har


def _response(response, capture):
    headers = response.headers
    mimeType = _header(headers, b"content-type")
    content = {"size": capture.size, "mimeType": mimeType}
    data = capture.data
    coding = _header(headers, b"content-encoding").strip().lower()
    if coding and coding != "identity" and capture.size:
        decoded = _decode(coding, data, capture.limit) if not capture.truncated else None
        if decoded is None:
            content["comment"] = "body is {}-coded as sent".format(coding)
        else:
            data = decoded
            content["size"] = len(decoded)
            content["compression"] = len(decoded) - capture.size
    _bodyText(content, capture, mimeType, data, base64Field="encoding")
    return {
        "status": response.status,
        "statusText": response.reason.decode("latin-1"),
        "httpVersion": "HTTP/1.1",
        "cookies": _responseCookies(headers),
        "headers": _headers(headers),
        "content": content,
        "redirectURL": _header(headers, b"location"),
        "headersSize": -1,
        "bodySize": capture.size,
    }


def _bodyText(har, capture, mimeType, data, base64Field):
    """
    Set C{har["text"]}: the body as text if it reads as text in its
    charset (UTF-8 by default), else base64 with C{har[base64Field]} saying
    so; and a comment when it was cut short or not recorded.
    """
    if not capture.size:
        return
    comments = [har["comment"]] if "comment" in har else []
    if capture.truncated:
        if data:
            comments.append("truncated: first {} of {} bytes recorded".format(len(capture.data), capture.size))
        else:
            comments.append("body of {} bytes not recorded".format(capture.size))
    if data:
        text = _asText(data, _charset(mimeType), final=not capture.truncated)
        if text is None:
            har["text"] = b64encode(data).decode("ascii")
            har[base64Field] = "base64"
            if base64Field.startswith("_"):
                comments.append("binary body: text is base64")
        else:
            har["text"] = text
    if comments:
        har["comment"] = "; ".join(comments)


def _asText(data, charset, final):
    """
    C{data} decoded, or None if it is not text.  Unless C{final}, an
    incomplete character at the end (a cut body) is left out.
    """
    try:
        codec = codecs.lookup(charset)
    except LookupError:
        codec = None
    if codec is None or not getattr(codec, "_is_text_encoding", True):
        codec = codecs.lookup("utf-8")
    try:
        text = codec.incrementaldecoder().decode(data, final)
    except (ValueError, TypeError):
        return None
    if "\x00" in text:
        return None
    return text


def _charset(mimeType):
    for param in mimeType.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or "utf-8"
    return "utf-8"


def _decode(coding, data, limit):
    """
    A gzip or deflate body decoded, or None: another coding, bad data, or
    more than C{limit} bytes once decoded.
    """
    if coding in ("gzip", "x-gzip"):
        attempts = (zlib.MAX_WBITS | 16,)
    elif coding == "deflate":
        attempts = (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    else:
        return None
    for wbits in attempts:
        decompressor = zlib.decompressobj(wbits)
        try:
            decoded = decompressor.decompress(data, limit + 1)
        except zlib.error:
            continue
        if decompressor.eof and len(decoded) <= limit:
            return decoded
    return None


def _ms(seconds):
    return round(max(seconds, 0.0) * 1000.0, 3)


def _isoTime(epoch):
    stamp = datetime.fromtimestamp(epoch, timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + "{:03d}Z".format(stamp.microsecond // 1000)


def _header(headers, name):
    values = headers.getRawHeaders(name)
    return values[-1].decode("latin-1") if values else ""


def _headers(headers):
    return [
        {"name": name.decode("latin-1"), "value": value.decode("latin-1")}
        for name, values in headers.getAllRawHeaders()
        for value in values
    ]


def _pairs(query):
    """C{a=1&b=%20} (bytes or str) to HAR name/value pairs, percent-decoded."""
    if isinstance(query, str):
        query = query.encode("latin-1")
    text = query.decode("utf-8", "replace")
    return [
        {"name": name, "value": value}
        for name, value in parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="replace")
    ]


def _requestCookies(headers):
    cookies = []
    for line in headers.getRawHeaders(b"cookie", []):
        for part in line.decode("latin-1").split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name:
                cookies.append({"name": name, "value": value})
    return cookies


def _responseCookies(headers):
    cookies = []
    for line in headers.getRawHeaders(b"set-cookie", []):
        parts = line.decode("latin-1").split(";")
        name, sep, value = parts[0].strip().partition("=")
        if not sep or not name:
            continue
        cookie = {"name": name, "value": value}
        for attribute in parts[1:]:
            key, _, attributeValue = attribute.strip().partition("=")
            key = key.strip().lower()
            attributeValue = attributeValue.strip()
            if key == "path":
                cookie["path"] = attributeValue
            elif key == "domain":
                cookie["domain"] = attributeValue
            elif key == "expires":
                expires = _httpDate(attributeValue)
                if expires is not None:
                    cookie["expires"] = expires
            elif key == "httponly":
                cookie["httpOnly"] = True
            elif key == "secure":
                cookie["secure"] = True
        cookies.append(cookie)
    return cookies


def _httpDate(text):
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
