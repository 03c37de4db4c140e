from twisted.application.service import ServiceMaker

proxyd = ServiceMaker(
    "proxyd",
    "proxyd.tap",
    "HTTP(S) proxy daemon: forward proxy with CONNECT tunnels, intercepting proxy, TLS-terminating reverse proxy",
    "proxyd",
)
