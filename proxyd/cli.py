# -*- test-case-name: tests.unit.test_cli -*-
"""
The C{proxyd} console script, for what is not the daemon (that is
C{twistd proxyd}).  Each command is a function that adds its parser and
sets C{run}; adding one (C{proxyd plugins}) is a function and an entry in
L{COMMANDS}.  Errors are one line on stderr and exit status 1.
"""

import argparse
import contextlib
import os
import sys

from cryptography.hazmat.primitives.serialization import Encoding

from proxyd import __version__
from proxyd.ca import CA_CERT, CAError, CertificateAuthority, defaultDirectory, loadCertificate
from proxyd.pluginload import PluginLoadError

TRUST_HELP = """\
trusting the CA (CA=$(proxyd ca path)):
  Debian/Ubuntu system store (the name must end in .crt):
    sudo cp "$CA" /usr/local/share/ca-certificates/proxyd.crt && sudo update-ca-certificates
  Chrome/Chromium on Linux and other NSS users (certutil: libnss3-tools):
    certutil -A -n proxyd -t C,, -i "$CA" -d sql:$HOME/.pki/nssdb
  Firefox keeps its own store per profile (about:profiles shows the directory):
    certutil -A -n proxyd -t C,, -i "$CA" -d sql:$HOME/.mozilla/firefox/XXXX.default-release
    or Settings > Privacy & Security > View Certificates > Authorities > Import
  Python and curl, per process:
    SSL_CERT_FILE="$CA" (ssl, httpx, urllib)   REQUESTS_CA_BUNDLE="$CA" (requests)
    curl --cacert "$CA" ...
    These replace the usual trust store; to keep it, trust a bundle instead:
    cat /etc/ssl/certs/ca-certificates.crt "$CA" > bundle.pem
"""


class UsageError(Exception):
    """A bad command line; one line, naming the command."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see '{self.prog} --help')")


def _caDirectory(args):
    return os.path.abspath(args.ca_dir or defaultDirectory())


def _describe(ca, out):
    rows = [
        ("certificate", ca.certPath),
        ("key", ca.keyPath),
        ("subject", ca.subject),
        ("SHA-256", ca.fingerprint),
        ("valid", f"{ca.notBefore:%Y-%m-%d %H:%M} UTC to {ca.notAfter:%Y-%m-%d %H:%M} UTC"),
    ]
    for label, value in rows:
        out.write(f"{label + ':':<12} {value}\n")


def _caInit(args, out):
    ca = CertificateAuthority.inDirectory(_caDirectory(args))
    if ca.created:
        out.write("Made a new proxyd CA.\n")
    else:
        out.write("A proxyd CA already exists here; it was kept.\n")
    _describe(ca, out)
    out.write("Clients must trust it: 'proxyd ca --help' says how.\n")
    return 0


def _caShow(args, out):
    _describe(CertificateAuthority.inDirectory(_caDirectory(args), create=False), out)
    return 0


def _caCertificate(args):
    """
    The checked certificate alone: path and export need no key, so a user
    who may read ca.pem but not ca.key can still use them.
    """
    directory = _caDirectory(args)
    path = os.path.join(directory, CA_CERT)
    if not os.path.lexists(path):
        raise CAError(f"{directory}: no CA here yet; 'proxyd ca init' makes one")
    return path, loadCertificate(path)


def _caPath(args, out):
    out.write(_caCertificate(args)[0] + "\n")
    return 0


def _caExport(args, out):
    pem = _caCertificate(args)[1].public_bytes(Encoding.PEM)
    if args.out in (None, "-"):
        out.write(pem.decode("ascii"))
        out.flush()
    else:
        try:
            with open(args.out, "wb") as f:
                f.write(pem)
        except OSError as e:
            raise CAError(f"{args.out}: cannot write it ({e.strerror})")
    return 0


def addCaCommand(commands):
    """C{proxyd ca init|show|path|export [--ca-dir DIR] [--out FILE]}."""
    ca = commands.add_parser(
        "ca",
        help="make, show or export the CA that mitm mode signs with",
        description="The CA that --mode=mitm signs leaf certificates with: ca.pem and "
        "ca.key in --ca-dir (default $PROXYD_HOME, else ~/.proxyd).",
        epilog=TRUST_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = ca.add_subparsers(dest="action", metavar="init|show|path|export", required=True)
    where = _Parser(add_help=False)
    where.add_argument(
        "--ca-dir", metavar="DIR", help="where ca.pem and ca.key live (default: $PROXYD_HOME, "
        "else ~/.proxyd)"
    )
    for name, run, text in (
        ("init", _caInit, "make the CA (key mode 0600), or say that it exists"),
        ("show", _caShow, "check the CA and print its paths, subject, SHA-256 and validity"),
        ("path", _caPath, "print the path of ca.pem"),
        ("export", _caExport, "write the CA certificate (PEM) to stdout or --out"),
    ):
        action = actions.add_parser(name, parents=[where], help=text, description=text)
        action.set_defaults(run=run)
        if name == "export":
            action.add_argument("--out", metavar="FILE", help="write here instead of stdout")


def _plugins(args, stdout):
    from proxyd.pluginload import listing

    stdout.write(listing(args.plugin_path))
    return 0


def addPluginsCommand(commands):
    """C{proxyd plugins [--plugin-path DIR ...]}: what --plugin can name."""
    plugins = commands.add_parser(
        "plugins",
        help="list the rewriting plugins --plugin can name",
        description="The plugins found: bundled, installed, and in each --plugin-path "
        "directory (the same as 'twistd proxyd --list-plugins').",
    )
    plugins.add_argument(
        "--plugin-path", metavar="DIR", action="append", default=[],
        help="another directory searched for plugins; repeatable",
    )
    plugins.set_defaults(run=_plugins)


COMMANDS = (addCaCommand, addPluginsCommand)


def makeParser():
    parser = _Parser(
        prog="proxyd",
        description="proxyd tools; the daemon itself runs as 'twistd -n proxyd'.",
    )
    parser.add_argument("--version", action="version", version="proxyd " + __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for addCommand in COMMANDS:
        addCommand(commands)
    return parser


def main(argv=None, stdout=None, stderr=None):
    """
    The C{proxyd} console script.

    @return: the exit status: 0, or 1 after one line on C{stderr}.
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        with contextlib.redirect_stdout(stdout):  # --help and --version
            args = makeParser().parse_args(argv)
        return args.run(args, stdout)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    except UsageError as e:
        message = str(e)
    except CAError as e:
        message = f"proxyd: {e}"
    except PluginLoadError as e:
        message = f"proxyd: {e}"
    except BrokenPipeError:  # proxyd ca export | head: no noise at exit either
        if stdout is sys.__stdout__:
            os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
        return 1
    stderr.write(" ".join(message.split("\n")) + "\n")
    return 1
