"""
Tests for L{proxyd.cli}: C{proxyd ca init|show|path|export}, its help, and
errors as one line with exit status 1.
"""

import io
import os
import stat

from cryptography import x509
from twisted.trial.unittest import SynchronousTestCase

from proxyd.ca import CertificateAuthority
from proxyd.cli import COMMANDS, main


class _Base(SynchronousTestCase):
    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())

    def proxyd(self, *argv):
        """
        @return: (exit status, stdout text, stderr text) of C{proxyd argv}.
        """
        out, err = io.StringIO(), io.StringIO()
        status = main(list(argv), stdout=out, stderr=err)
        return status, out.getvalue(), err.getvalue()

    def ca(self, *argv):
        return self.proxyd("ca", *argv, "--ca-dir", self.directory)

    def failed(self, *argv):
        """Run C{proxyd argv}, expecting one line on stderr and status 1."""
        status, out, err = self.proxyd(*argv)
        self.assertEqual(status, 1)
        self.assertEqual(out, "")
        self.assertEqual(err.count("\n"), 1, err)
        self.assertTrue(err.endswith("\n"))
        self.assertNotIn("Traceback", err)
        return err


class InitTests(_Base):
    def test_init(self):
        """init makes the CA (0600 key, 0700 directory) and shows it."""
        status, out, err = self.ca("init")
        self.assertEqual((status, err), (0, ""))
        ca = CertificateAuthority.inDirectory(self.directory, create=False)
        self.assertIn("Made a new proxyd CA", out)
        self.assertIn(ca.fingerprint, out)
        self.assertIn(os.path.join(self.directory, "ca.pem"), out)
        self.assertIn("proxyd ca --help", out)
        self.assertEqual(stat.S_IMODE(os.stat(ca.keyPath).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.directory).st_mode), 0o700)

    def test_initAgain(self):
        """A second init keeps the CA and says so."""
        self.ca("init")
        before = CertificateAuthority.inDirectory(self.directory).fingerprint
        status, out, _ = self.ca("init")
        self.assertEqual(status, 0)
        self.assertIn("already exists", out)
        self.assertIn(before, out)

    def test_proxydHome(self):
        """Without --ca-dir, $PROXYD_HOME is used."""
        old = os.environ.get("PROXYD_HOME")
        os.environ["PROXYD_HOME"] = self.directory
        self.addCleanup(
            lambda: os.environ.pop("PROXYD_HOME")
            if old is None
            else os.environ.__setitem__("PROXYD_HOME", old)
        )
        self.assertEqual(self.proxyd("ca", "init")[0], 0)
        self.assertEqual(
            self.proxyd("ca", "path"), (0, os.path.join(self.directory, "ca.pem") + "\n", "")
        )

    def test_refusedKey(self):
        """An existing CA with a lax key is refused, not replaced."""
        self.ca("init")
        keyPath = os.path.join(self.directory, "ca.key")
        os.chmod(keyPath, 0o644)
        err = self.failed("ca", "init", "--ca-dir", self.directory)
        self.assertEqual(
            err, "proxyd: " + keyPath + " is readable by others (mode 0644); chmod 600 it\n"
        )


class ShowPathExportTests(_Base):
    def setUp(self):
        _Base.setUp(self)
        self.ca("init")
        self.authority = CertificateAuthority.inDirectory(self.directory, create=False)

    def test_show(self):
        """show prints the paths, subject, SHA-256 fingerprint and validity."""
        status, out, err = self.ca("show")
        self.assertEqual((status, err), (0, ""))
        self.assertIn("SHA-256:     " + self.authority.fingerprint + "\n", out)
        self.assertIn("certificate: " + self.authority.certPath + "\n", out)
        self.assertIn("key:         " + self.authority.keyPath + "\n", out)
        self.assertIn("subject:     " + self.authority.subject + "\n", out)
        self.assertIn(f"{self.authority.notAfter:%Y-%m-%d %H:%M} UTC", out)

    def test_path(self):
        """path prints the absolute path of ca.pem and nothing else."""
        self.assertEqual(self.ca("path"), (0, self.authority.certPath + "\n", ""))

    def test_exportStdout(self):
        """export writes the PEM to stdout."""
        status, out, err = self.ca("export")
        self.assertEqual((status, err), (0, ""))
        self.assertEqual(out.encode("ascii"), self.authority.certPEM)
        self.assertEqual(x509.load_pem_x509_certificate(out.encode()), self.authority.certificate)

    def test_exportFile(self):
        """export --out writes the PEM to the file and prints nothing."""
        target = self.mktemp()
        self.assertEqual(self.ca("export", "--out", target), (0, "", ""))
        with open(target, "rb") as f:
            self.assertEqual(f.read(), self.authority.certPEM)

    def test_exportNeedsNoKey(self):
        """path and export read only the certificate: a lax or absent key does not matter."""
        os.chmod(self.authority.keyPath, 0o644)
        self.assertEqual(self.ca("path")[0], 0)
        self.assertEqual(self.ca("export")[0], 0)
        self.failed("ca", "show", "--ca-dir", self.directory)

    def test_exportUnwritable(self):
        """An --out that cannot be written is one line naming it."""
        err = self.failed("ca", "export", "--ca-dir", self.directory, "--out", "/nonexistent/x.pem")
        self.assertIn("/nonexistent/x.pem: cannot write it", err)


class ErrorTests(_Base):
    def test_noCA(self):
        """show, path and export make nothing: no CA is one line and status 1."""
        for action in ("show", "path", "export"):
            err = self.failed("ca", action, "--ca-dir", self.directory)
            self.assertIn("proxyd ca init", err)
        self.assertFalse(os.path.exists(self.directory))

    def test_garbage(self):
        """A ca.pem that is not PEM is one line naming the file."""
        os.mkdir(self.directory)
        with open(os.path.join(self.directory, "ca.pem"), "w") as f:
            f.write("garbage\n")
        err = self.failed("ca", "path", "--ca-dir", self.directory)
        self.assertIn("not a PEM certificate", err)

    def test_usage(self):
        """Bad command lines are one line naming the command, status 1."""
        self.assertIn("proxyd:", self.failed())
        self.assertIn("proxyd ca:", self.failed("ca"))
        self.assertIn("invalid choice", self.failed("ca", "frobnicate"))
        self.assertIn("--out", self.failed("ca", "path", "--out", "x"))
        self.assertIn("proxyd ca init:", self.failed("ca", "init", "--ca-dir"))


class HelpTests(_Base):
    def test_caHelp(self):
        """proxyd ca --help says how to trust the CA in each store."""
        status, out, err = self.proxyd("ca", "--help")
        self.assertEqual((status, err), (0, ""))
        for text in (
            "init|show|path|export",
            "/usr/local/share/ca-certificates/proxyd.crt",
            "update-ca-certificates",
            "certutil -A -n proxyd -t C,, -i",
            "sql:$HOME/.pki/nssdb",
            ".mozilla/firefox",
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "--cacert",
        ):
            self.assertIn(text, out)

    def test_help(self):
        """proxyd --help lists the commands and points to twistd for the daemon."""
        status, out, _ = self.proxyd("--help")
        self.assertEqual(status, 0)
        self.assertIn("ca", out)
        self.assertIn("twistd", out)

    def test_version(self):
        """proxyd --version prints the version."""
        status, out, _ = self.proxyd("--version")
        self.assertEqual(status, 0)
        self.assertTrue(out.startswith("proxyd "))

    def test_commandsExtend(self):
        """A command is one function in COMMANDS: 'proxyd ca' and 'proxyd plugins'."""
        self.assertEqual([c.__name__ for c in COMMANDS], ["addCaCommand", "addPluginsCommand"])
