"""proxyd: an HTTP(S) proxy daemon built on Twisted."""

__version__ = "0.1.0"
