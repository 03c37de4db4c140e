#!/usr/bin/env python3
"""h11 vs httptools: the cost of the HTTP/1.1 layer for one proxied exchange.

One exchange is what a forward proxy does for one keep-alive request/response:

  1. parse the client's absolute-form request head (server side),
  2. serialize the request for the origin (client side), hop-by-hop headers
     dropped and Via added,
  3. parse the origin's response (head and a 1 KiB Content-Length body),
  4. serialize the response for the client.

Both parsers are driven the way a proxy drives them: one long-lived parser
per side, reused across exchanges (keep-alive). The header filtering and
Via code is the same Python function for both, so the difference is the
parser/serializer itself. Each round runs a fixed number of exchanges;
the median of the rounds is printed, with the ratio h11/httptools.

Needs h11 and httptools importable: `bench/run.sh --only parsers` makes a
venv with both, or `pip install h11 httptools` and run this file directly.
"""

import argparse
import gc
import json
import platform
import statistics
import sys
import time

try:
    import h11
    import httptools
except ImportError as e:  # pragma: no cover - only a usage message
    sys.exit(f"parsers.py needs h11 and httptools ({e}); run `bench/run.sh --only parsers` "
             "or `pip install h11 httptools` first")

ORIGIN = b"127.0.0.1:8000"
BODY = b"x" * 1024

REQUEST = (
    b"GET http://" + ORIGIN + b"/assets/app.js?v=3 HTTP/1.1\r\n"
    b"Host: " + ORIGIN + b"\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: */*\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Referer: http://127.0.0.1:8000/index.html\r\n"
    b"Cookie: session=3f8a9c0d1e2b; theme=dark\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Mon, 23 Nov 2026 21:00:00 GMT\r\n"
    b"Content-Type: application/javascript\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n"
    b"Last-Modified: Mon, 23 Nov 2026 20:00:00 GMT\r\n"
    b"Connection: keep-alive\r\n"
    b"Keep-Alive: timeout=65\r\n"
    b"ETag: \"6560a7b0-400\"\r\n"
    b"Accept-Ranges: bytes\r\n"
    b"\r\n" + BODY
)

HOP_BY_HOP = frozenset([
    b"connection", b"proxy-connection", b"keep-alive", b"proxy-authorization",
    b"proxy-authenticate", b"te", b"trailer", b"transfer-encoding", b"upgrade",
])
VIA = (b"Via", b"1.1 proxyd")


def filter_headers(headers):
    """Drop hop-by-hop headers (and those named in Connection), add Via.

    `headers` is a list of (name, value) with lower-case or mixed-case names.
    Transfer-Encoding is dropped here only because both sides of this bench
    use Content-Length bodies; h11 frames bodies itself.
    """
    named = set()
    for k, v in headers:
        if k.lower() == b"connection":
            named.update(t.strip().lower() for t in v.split(b","))
    out = [(k, v) for k, v in headers if k.lower() not in HOP_BY_HOP and k.lower() not in named]
    out.append(VIA)
    return out


# --------------------------------------------------------------------- h11

class H11Exchange:
    def __init__(self):
        self.downstream = h11.Connection(h11.SERVER)   # the client talks to us
        self.upstream = h11.Connection(h11.CLIENT)     # we talk to the origin

    def run(self):
        ds, us = self.downstream, self.upstream
        # 1. parse request
        ds.receive_data(REQUEST)
        req = ds.next_event()
        end = ds.next_event()
        assert type(req) is h11.Request and type(end) is h11.EndOfMessage, (req, end)
        # 2. serialize for the origin
        out = us.send(h11.Request(method=req.method, target=b"/assets/app.js?v=3",
                                  headers=filter_headers(req.headers.raw_items())))
        out += us.send(h11.EndOfMessage())
        # 3. parse response
        us.receive_data(RESPONSE)
        resp = us.next_event()
        data = us.next_event()
        end = us.next_event()
        assert type(resp) is h11.Response and type(end) is h11.EndOfMessage, (resp, end)
        # 4. serialize for the client
        back = ds.send(h11.Response(status_code=resp.status_code, reason=resp.reason,
                                    headers=filter_headers(resp.headers.raw_items())))
        back += ds.send(h11.Data(data=data.data))
        back += ds.send(h11.EndOfMessage())
        # keep-alive: next cycle on both sides
        us.start_next_cycle()
        ds.start_next_cycle()
        return len(out) + len(back)


# --------------------------------------------------------------- httptools

class _Req:
    __slots__ = ("url", "headers", "done", "body")

    def __init__(self):
        self.headers = []
        self.url = b""
        self.body = []
        self.done = False

    def on_message_begin(self):
        self.headers = []
        self.url = b""
        self.body = []
        self.done = False

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        self.done = True


class HttptoolsExchange:
    def __init__(self):
        self.req = _Req()
        self.resp = _Req()
        self.req_parser = httptools.HttpRequestParser(self.req)
        self.resp_parser = httptools.HttpResponseParser(self.resp)

    @staticmethod
    def _head(first_line, headers):
        parts = [first_line]
        for k, v in headers:
            parts.append(k + b": " + v + b"\r\n")
        parts.append(b"\r\n")
        return b"".join(parts)

    def run(self):
        r, p = self.req, self.req_parser
        # 1. parse request
        p.feed_data(REQUEST)
        assert r.done
        url = httptools.parse_url(r.url)
        target = url.path + (b"?" + url.query if url.query else b"")
        # 2. serialize for the origin
        out = self._head(p.get_method() + b" " + target + b" HTTP/1.1\r\n", filter_headers(r.headers))
        # 3. parse response
        s, q = self.resp, self.resp_parser
        q.feed_data(RESPONSE)
        assert s.done
        body = b"".join(s.body)
        # 4. serialize for the client
        status = q.get_status_code()
        back = self._head(b"HTTP/1.1 %d OK\r\n" % status,
                          filter_headers(s.headers)) + body
        return len(out) + len(back)


class SharedOnly:
    """The part both variants share (header filtering and Via, both ways)."""

    def __init__(self):
        self.req = [(b"Host", ORIGIN), (b"User-Agent", b"Mozilla/5.0"), (b"Accept", b"*/*"),
                    (b"Accept-Language", b"en-US"), (b"Accept-Encoding", b"gzip"),
                    (b"Referer", b"http://x/"), (b"Cookie", b"a=b"),
                    (b"Proxy-Connection", b"keep-alive"), (b"Connection", b"keep-alive")]
        self.resp = [(b"Server", b"nginx"), (b"Date", b"x"), (b"Content-Type", b"a/b"),
                     (b"Content-Length", b"1024"), (b"Last-Modified", b"x"),
                     (b"Connection", b"keep-alive"), (b"Keep-Alive", b"timeout=65"),
                     (b"ETag", b"x"), (b"Accept-Ranges", b"bytes")]

    def run(self):
        return len(filter_headers(self.req)) + len(filter_headers(self.resp))


def measure(factory, rounds, per_round):
    ex = factory()
    for _ in range(min(per_round, 2000)):   # warm-up
        ex.run()
    results = []
    for _ in range(rounds):
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(per_round):
            ex.run()
        results.append((time.perf_counter() - t0) / per_round * 1e6)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--h11-exchanges", type=int, default=3000, help="exchanges per round for h11")
    ap.add_argument("--httptools-exchanges", type=int, default=60000,
                    help="exchanges per round for httptools")
    ap.add_argument("--quick", action="store_true", help="3 rounds, fewer exchanges")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE ('-' = stdout only JSON)")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.h11_exchanges, a.httptools_exchanges = 3, 500, 10000
    if a.rounds < 1 or a.rounds > 100:
        ap.error("--rounds must be 1..100")

    # sanity: both produce the same bytes count order of magnitude
    n1, n2 = H11Exchange().run(), HttptoolsExchange().run()

    h = measure(H11Exchange, a.rounds, a.h11_exchanges)
    t = measure(HttptoolsExchange, a.rounds, a.httptools_exchanges)
    c = measure(SharedOnly, a.rounds, a.httptools_exchanges)
    mh, mt, mc = statistics.median(h), statistics.median(t), statistics.median(c)
    res = {
        "python": platform.python_version(),
        "h11_version": h11.__version__,
        "httptools_version": httptools.__version__,
        "rounds": a.rounds,
        "bytes_out_per_exchange": {"h11": n1, "httptools": n2},
        "h11_us_per_exchange": {"median": round(mh, 2), "rounds": [round(x, 2) for x in h]},
        "httptools_us_per_exchange": {"median": round(mt, 2), "rounds": [round(x, 2) for x in t]},
        "shared_filtering_us_per_exchange": {"median": round(mc, 2)},
        "ratio_h11_over_httptools": round(mh / mt, 1),
    }
    if a.json == "-":
        print(json.dumps(res))
        return
    print(f"one proxied exchange (parse req, serialize req, parse resp + 1 KiB body, serialize resp), "
          f"Python {res['python']}, median of {a.rounds} rounds")
    print(f"  h11 {res['h11_version']:<10} {mh:9.2f} us/exchange")
    print(f"  httptools {res['httptools_version']:<4} {mt:9.2f} us/exchange")
    print(f"  ratio h11/httptools: {mh / mt:.1f}x")
    print(f"  (both include {mc:.2f} us of shared header filtering + Via, the same Python code)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
