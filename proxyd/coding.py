# -*- test-case-name: tests.unit.test_plugin_replace,tests.unit.test_plugin_har -*-
"""
How a body's bytes are coded: the content coding (gzip, deflate) to take
off, and the charset its Content-Type declares.

Hooks and filters get bodies as they came, still content-coded.  Plugins
that look inside them (C{replace} rewrites text, C{har} records it) share
this one decoder so they agree on what a valid body is: a truncated or
corrupt stream, or one followed by other bytes, is refused rather than
half read, and no more than the caller's limit is ever decompressed, so a
gzip bomb costs at most that many bytes.
"""

import zlib

# The content codings decodeContent takes off.
DECODABLE = frozenset(["gzip", "x-gzip", "deflate"])

_GZIP_MAGIC = b"\x1f\x8b"


class DecodeError(Exception):
    """The body cannot be decoded; the message says why, for a log line."""


class DecodedTooBig(DecodeError):
    """Decoded, the body would be larger than the limit."""


def contentType(message):
    """
    (media type, charset or None) from the message's Content-Type; the
    media type is lower case, and '' if there is none.
    """
    value = message.header(b"content-type")
    if value is None:
        return "", None
    parts = value.decode("latin-1").split(";")
    mediaType = parts[0].strip().lower()
    charset = None
    for param in parts[1:]:
        name, sep, val = param.partition("=")
        if sep and name.strip().lower() == "charset":
            charset = val.strip().strip('"').strip() or None
    return mediaType, charset


def decodeContent(coding, data, limit):
    """
    Take content coding C{coding} (lower case) off C{data}, never
    producing more than C{limit} bytes.  Raw deflate (no zlib wrapper) is
    accepted as C{deflate}, as some servers send it; concatenated gzip
    members are read as one body, as browsers do.

    @return: C{(decoded, wbits)}; L{encodeContent} with C{wbits} puts the
        same coding back.
    @raise DecodedTooBig: more than C{limit} bytes would come out.
    @raise DecodeError: a coding not in L{DECODABLE}, or a body that is
        not valid, is truncated, or has bytes after its end.
    """
    if coding not in DECODABLE:
        raise DecodeError("cannot decode Content-Encoding {}".format(coding))
    try:
        if coding in ("gzip", "x-gzip"):
            return _inflate(data, 16 + zlib.MAX_WBITS, limit), 16 + zlib.MAX_WBITS
        try:
            return _inflate(data, zlib.MAX_WBITS, limit), zlib.MAX_WBITS
        except zlib.error:
            # Some servers send raw deflate (no zlib wrapper) as "deflate".
            return _inflate(data, -zlib.MAX_WBITS, limit), -zlib.MAX_WBITS
    except zlib.error as e:
        raise DecodeError("body is not valid {}: {}".format(coding, e))


def encodeContent(data, wbits):
    """C{data} coded again as L{decodeContent} found it (its C{wbits})."""
    compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return compressor.compress(data) + compressor.flush()


def _inflate(data, wbits, limit):
    """
    Decompress one zlib, gzip (C{wbits} 16+) or raw deflate (negative)
    stream, or several gzip members in a row.

    @raise DecodedTooBig: more than C{limit} bytes would come out.
    @raise DecodeError: truncated, corrupt, or followed by other bytes.
    @raise zlib.error: not this kind of stream at all.
    """
    out = []
    total = 0
    while True:
        inflater = zlib.decompressobj(wbits)
        chunk = inflater.decompress(data, limit - total + 1)
        total += len(chunk)
        if total > limit or inflater.unconsumed_tail:
            raise DecodedTooBig("decodes to more than {} bytes".format(limit))
        if not inflater.eof:
            raise DecodeError("compressed body is truncated")
        out.append(chunk)
        rest = inflater.unused_data
        if not rest:
            return b"".join(out)
        if wbits > 15 and rest.startswith(_GZIP_MAGIC):
            data = rest
            continue
        raise DecodeError("compressed body has {} bytes after its end".format(len(rest)))
