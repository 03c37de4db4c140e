"""
Tests for L{proxyd.config}: the TOML file, its merge with the command line,
and the check of every value.
"""

import os
import re
from ipaddress import ip_network

from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from proxyd.config import OPTIONS, ConfigError, ProxyConfig, fromOptions, readFile
from proxyd.policy import AddressPolicy, ProxyAuth

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "etc", "proxyd.toml")


class _Base(SynchronousTestCase):
    def config(self, **options):
        """
        Build from command-line style options; C{connect_timeout=...} means
        C{--connect-timeout}.
        """
        options = {k.replace("_", "-"): v for k, v in options.items()}
        return fromOptions(options, MemoryReactor())

    def refused(self, **options):
        """
        @return: the one-line message of the ConfigError raised.
        """
        with self.assertRaises(ConfigError) as e:
            self.config(**options)
        message = str(e.exception)
        self.assertNotIn("\n", message)
        return message

    def tomlFile(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path


class DefaultsTests(_Base):
    def test_defaults(self):
        """With nothing given, the SPEC defaults apply."""
        config = self.config()
        self.assertEqual(config.mode, "forward")
        self.assertEqual(config.listen, ("tcp:8080:interface=127.0.0.1",))
        self.assertEqual(config.allow, (ip_network("127.0.0.0/8"), ip_network("::1/128")))
        self.assertIsNone(config.proxyAuth)
        self.assertIn(443, config.connectPorts)
        self.assertNotIn(8443, config.connectPorts)
        self.assertEqual(
            config.addressPolicy, AddressPolicy(allowPrivate=True, allowLinkLocal=False)
        )
        self.assertIsNone(config.accessLog)
        self.assertEqual(config.logFormat, "text")
        self.assertEqual(
            (config.connectTimeout, config.idleTimeout, config.headerTimeout),
            (10.0, 300.0, 30.0),
        )
        self.assertEqual(config.maxConnections, 10000)
        self.assertEqual(config.maxHeaderSize, 65536)
        self.assertIsNone(config.configFile)
        self.assertEqual(config, ProxyConfig())

    def test_directConstructionDerivesPrivatePolicy(self):
        """A ProxyConfig built by hand derives the default private policy
        from its listeners."""
        self.assertTrue(ProxyConfig().addressPolicy.allowPrivate)
        self.assertFalse(ProxyConfig(listen=("tcp:8080",)).addressPolicy.allowPrivate)

    def test_frozen(self):
        """The configuration cannot be changed after start-up."""
        config = ProxyConfig()
        self.assertRaises(AttributeError, setattr, config, "mode", "mitm")

    def test_values(self):
        """Good command-line values are converted."""
        logPath = self.mktemp()
        config = self.config(
            listen=["tcp:0:interface=127.0.0.1", "unix:/tmp/p.sock"],
            allow=["10.0.0.0/8", "192.168.1.7"],
            connect_ports="443,8000-8999",
            access_log=logPath,
            log_format="json",
            connect_timeout="2.5",
            idle_timeout="60",
            header_timeout="0.5",
            max_connections="5",
            max_header_size="1024",
            proxy_auth="u:p",
        )
        self.assertEqual(config.listen, ("tcp:0:interface=127.0.0.1", "unix:/tmp/p.sock"))
        self.assertEqual(config.allow, (ip_network("10.0.0.0/8"), ip_network("192.168.1.7/32")))
        self.assertIn(8500, config.connectPorts)
        self.assertEqual(config.accessLog, logPath)
        self.assertEqual(config.logFormat, "json")
        self.assertEqual(config.connectTimeout, 2.5)
        self.assertEqual(config.idleTimeout, 60.0)
        self.assertEqual(config.headerTimeout, 0.5)
        self.assertEqual(config.maxConnections, 5)
        self.assertEqual(config.maxHeaderSize, 1024)
        self.assertIsInstance(config.proxyAuth, ProxyAuth)

    def test_allowNonStrict(self):
        """Host bits in a CIDR are ignored, as ip_network(strict=False) does."""
        self.assertEqual(self.config(allow=["10.1.2.3/8"]).allow, (ip_network("10.0.0.0/8"),))


class RefusedValueTests(_Base):
    def test_mode(self):
        """Unknown modes are refused; reverse needs its certificate and backends."""
        self.assertEqual(
            self.refused(mode="bad"), "--mode: expected forward, mitm or reverse, got 'bad'"
        )
        self.assertEqual(
            self.refused(mode="reverse"),
            "--tls-cert: reverse mode needs --tls-cert FILE --tls-key FILE (the site's certificate)",
        )

    def test_listen(self):
        """Malformed endpoints are refused naming --listen and the endpoint."""
        cases = {
            "tcp:abc": "--listen tcp:abc: 'abc' is not a port number",
            "tcp:": "--listen tcp:: '' is not a port number",
            "tcp:70000": "--listen tcp:70000: port 70000 is out of range 0-65535",
            "tcp:8080:foo=1": "--listen tcp:8080:foo=1: unknown parameter 'foo'",
            "tcp:8080:backlog=x": "--listen tcp:8080:backlog=x: 'x' is not a number",
            "nosuch:1": "--listen nosuch:1: unknown endpoint type 'nosuch'",
            "unix:": "--listen unix:: a unix endpoint needs a path (unix:/run/proxyd.sock)",
            "haproxy:tcp:x": "--listen haproxy:tcp:x: 'x' is not a port number",
            "systemd:domain=INET:index=7": "--listen systemd:domain=INET:index=7: "
            "systemd passed no such socket (is a .socket unit active?)",
            "": "--listen '': empty endpoint (expected e.g. tcp:8080:interface=127.0.0.1)",
        }
        for value, message in cases.items():
            self.assertEqual(self.refused(listen=["tcp:0", value]), message)

    def test_allow(self):
        """Bad networks are refused naming --allow."""
        for value in ("10.0.0.0/33", "not-a-network", "10.0.0.0/8/8", ""):
            self.assertEqual(
                self.refused(allow=[value]),
                f"--allow: {value!r} is not an IP address or network (CIDR)",
            )

    def test_connectPorts(self):
        """Bad port lists are refused naming --connect-ports."""
        self.assertEqual(
            self.refused(connect_ports="70000"),
            "--connect-ports: port 70000 is out of range 1-65535",
        )
        self.assertEqual(
            self.refused(connect_ports="9-1"), "--connect-ports: range 9-1 is reversed"
        )

    def test_timeouts(self):
        """Timeouts must be finite numbers above zero."""
        for name in ("connect_timeout", "idle_timeout", "header_timeout"):
            option = "--" + name.replace("_", "-")
            for value in ("0", "-1", "nan", "inf", "1e999"):
                self.assertEqual(
                    self.refused(**{name: value}),
                    f"{option}: must be a number of seconds above 0, got {value!r}",
                )
            self.assertEqual(
                self.refused(**{name: "soon"}),
                f"{option}: expected a number of seconds, got 'soon'",
            )

    def test_integers(self):
        """Counts are whole numbers inside their bounds."""
        self.assertEqual(
            self.refused(max_connections="0"), "--max-connections: must be at least 1, got '0'"
        )
        self.assertEqual(
            self.refused(max_connections="1.5"),
            "--max-connections: expected a whole number, got '1.5'",
        )
        for value in ("1023", "1048577"):
            self.assertEqual(
                self.refused(max_header_size=value),
                f"--max-header-size: must be between 1024 and 1048576, got {value!r}",
            )
        self.assertEqual(
            self.refused(max_header_size="lots"),
            "--max-header-size: expected a whole number, got 'lots'",
        )

    def test_auth(self):
        """Bad credentials, unreadable files, and both at once are refused."""
        self.assertEqual(self.refused(proxy_auth="nocolon"), "--proxy-auth: expected USER:PASSWORD")
        missing = self.mktemp()
        self.assertEqual(
            self.refused(proxy_auth_file=missing),
            f"--proxy-auth-file: cannot read {missing}: No such file or directory",
        )
        self.assertEqual(
            self.refused(proxy_auth_file="/"), "--proxy-auth-file: cannot read /: Is a directory"
        )
        bad = self.tomlFile("alice\n")
        self.assertEqual(
            self.refused(proxy_auth_file=bad),
            f"--proxy-auth-file: {bad}: line 1: expected USER:PASSWORD",
        )
        self.assertEqual(
            self.refused(proxy_auth="a:b", proxy_auth_file=bad),
            "--proxy-auth: give --proxy-auth or --proxy-auth-file, not both",
        )

    def test_authSecretNotEchoed(self):
        """A refused --proxy-auth never prints the password."""
        self.assertNotIn("hunter2", self.refused(proxy_auth=":hunter2"))

    def test_accessLog(self):
        """An access log that cannot be opened is refused at start."""
        path = os.path.join(self.mktemp(), "access.log")
        self.assertEqual(
            self.refused(access_log=path),
            f"--access-log: cannot open {path}: No such file or directory",
        )
        self.assertEqual(self.config(access_log="-").accessLog, "-")

    def test_logFormat(self):
        """Only text and json."""
        self.assertEqual(
            self.refused(log_format="xml"), "--log-format: expected text or json, got 'xml'"
        )


class PrivatePolicyTests(_Base):
    def test_loopbackListenersAllow(self):
        """Loopback-only listeners allow private upstreams, not link-local."""
        config = self.config(listen=["tcp:0:interface=127.0.0.1", "unix:/tmp/x.sock"])
        self.assertEqual(config.addressPolicy, AddressPolicy(allowPrivate=True, allowLinkLocal=False))

    def test_publicListenerDenies(self):
        """One public listener denies private upstreams."""
        config = self.config(listen=["tcp:0:interface=127.0.0.1", "tcp:0"])
        self.assertEqual(config.addressPolicy, AddressPolicy(allowPrivate=False, allowLinkLocal=False))

    def test_explicitAllow(self):
        """--allow-private allows link-local too, even on a public listener."""
        config = self.config(listen=["tcp:0"], allow_private=True)
        self.assertEqual(config.addressPolicy, AddressPolicy(allowPrivate=True, allowLinkLocal=True))

    def test_explicitDeny(self):
        """--deny-private denies even on loopback listeners."""
        config = self.config(deny_private=True)
        self.assertEqual(config.addressPolicy, AddressPolicy(allowPrivate=False, allowLinkLocal=False))

    def test_both(self):
        """Both flags at once are refused."""
        self.assertEqual(
            self.refused(allow_private=True, deny_private=True),
            "--allow-private: cannot be combined with --deny-private",
        )


class FileTests(_Base):
    def test_readsEveryOption(self):
        """Every option can be set in the file, and its values apply."""
        users = self.tomlFile("alice:pw\n")
        path = self.tomlFile(
            'mode = "forward"\n'
            'listen = ["tcp:0:interface=0.0.0.0"]\n'
            'allow = ["10.0.0.0/8"]\n'
            f'proxy-auth-file = "{users}"\n'
            "connect-ports = [443, \"8000-8010\"]\n"
            "allow-private = true\n"
            'access-log = "-"\n'
            'log-format = "json"\n'
            "connect-timeout = 5\n"
            "idle-timeout = 0.5\n"
            "header-timeout = 7\n"
            "max-connections = 3\n"
            "max-header-size = 2048\n"
        )
        config = self.config(config=path)
        self.assertEqual(config.listen, ("tcp:0:interface=0.0.0.0",))
        self.assertEqual(config.allow, (ip_network("10.0.0.0/8"),))
        self.assertIsInstance(config.proxyAuth, ProxyAuth)
        self.assertIn(8005, config.connectPorts)
        self.assertEqual(config.addressPolicy, AddressPolicy(allowPrivate=True, allowLinkLocal=True))
        self.assertEqual((config.accessLog, config.logFormat), ("-", "json"))
        self.assertEqual(
            (config.connectTimeout, config.idleTimeout, config.headerTimeout), (5.0, 0.5, 7.0)
        )
        self.assertEqual((config.maxConnections, config.maxHeaderSize), (3, 2048))
        self.assertEqual(config.configFile, path)

    def test_commandLineWins(self):
        """A command-line value beats the file's, per option; others stay."""
        path = self.tomlFile(
            'connect-ports = "1"\nconnect-timeout = 5\nallow = ["10.0.0.0/8"]\n'
            'listen = ["tcp:0:interface=0.0.0.0", "tcp:0:interface=127.0.0.2"]\n'
        )
        config = self.config(
            config=path, connect_ports="443", listen=["tcp:0:interface=127.0.0.1"]
        )
        self.assertEqual(str(config.connectPorts), "443")
        self.assertEqual(config.connectTimeout, 5.0)
        self.assertEqual(config.allow, (ip_network("10.0.0.0/8"),))
        # The command line's list replaces the file's; it does not add to it.
        self.assertEqual(config.listen, ("tcp:0:interface=127.0.0.1",))

    def test_commandLinePrivateFlagReplacesFile(self):
        """--deny-private on the command line beats allow-private in the file."""
        path = self.tomlFile("allow-private = true\n")
        config = self.config(config=path, deny_private=True)
        self.assertEqual(config.addressPolicy, AddressPolicy(allowPrivate=False, allowLinkLocal=False))

    def test_commandLineAuthReplacesFile(self):
        """--proxy-auth on the command line replaces the file's auth file."""
        path = self.tomlFile(f'proxy-auth-file = "{self.mktemp()}"\n')
        config = self.config(config=path, proxy_auth="a:b")
        self.assertIsInstance(config.proxyAuth, ProxyAuth)

    def test_falseFlagIsUnset(self):
        """allow-private = false is the same as leaving it out."""
        path = self.tomlFile("allow-private = false\ndeny-private = false\n")
        config = self.config(config=path)
        self.assertEqual(config.addressPolicy, AddressPolicy(allowPrivate=True, allowLinkLocal=False))

    def test_singleStringForList(self):
        """A repeatable option may be one string in the file."""
        path = self.tomlFile('allow = "10.0.0.0/8"\n')
        self.assertEqual(self.config(config=path).allow, (ip_network("10.0.0.0/8"),))

    def test_badValueNamesFile(self):
        """A bad value from the file names the option and the file."""
        path = self.tomlFile("connect-timeout = -4\n")
        self.assertEqual(
            self.refused(config=path),
            f"--connect-timeout: must be a number of seconds above 0, got -4 (in {path})",
        )
        path = self.tomlFile('listen = ["tcp:x"]\n')
        self.assertEqual(
            self.refused(config=path), f"--listen tcp:x: 'x' is not a port number (in {path})"
        )

    def test_emptyLists(self):
        """Empty lists in the file are refused: nothing to listen on, nobody allowed."""
        path = self.tomlFile("listen = []\n")
        self.assertEqual(self.refused(config=path), f"--listen: no endpoint given (in {path})")
        path = self.tomlFile("allow = []\n")
        self.assertEqual(
            self.refused(config=path),
            f"--allow: empty list: no client could use the proxy (in {path})",
        )

    def test_syntaxError(self):
        """TOML syntax errors give the line."""
        path = self.tomlFile('mode = "forward"\nlisten = [\n')
        message = self.refused(config=path)
        self.assertTrue(message.startswith(f"--config {path}: "), message)
        path = self.tomlFile('mode = "forward"\n[a]\nb = 1\n[a]\n')
        self.assertEqual(
            self.refused(config=path), f"--config {path}: line 4: cannot declare ('a',) twice"
        )
        path = self.tomlFile("mode = forward\n")
        self.assertRegex(self.refused(config=path), f"^--config {re.escape(path)}: line 1: ")

    def test_unknownKey(self):
        """Unknown keys are refused, with a suggestion when one is close."""
        path = self.tomlFile("frobnicate = 3\n")
        self.assertEqual(self.refused(config=path), f"--config {path}: unknown option 'frobnicate'")
        path = self.tomlFile("connect_timeout = 3\n")
        self.assertEqual(
            self.refused(config=path),
            f"--config {path}: unknown option 'connect_timeout' "
            "(did you mean 'connect-timeout'?)",
        )
        path = self.tomlFile('config = "x.toml"\n')
        self.assertEqual(
            self.refused(config=path),
            f"--config {path}: 'config' cannot be set inside a config file",
        )

    def test_wrongTypes(self):
        """Values of the wrong TOML type are refused naming the key."""
        cases = {
            'connect-timeout = "5"': "connect-timeout must be a number, not a string",
            "connect-timeout = true": "connect-timeout must be a number, not a boolean",
            "max-connections = 1.5": "max-connections must be an integer, not a float",
            "mode = 1": "mode must be a string, not an integer",
            "listen = [1]": "listen must be a list of strings, not an array",
            'allow-private = "yes"': "allow-private must be true or false, not a string",
            "connect-ports = 1.5": 'connect-ports must be a string like "443,8443", not a float',
            "[mode]\nx = 1": "mode must be a string, not a table",
            "log-format = 1979-05-27": "log-format must be a string, not a date/time",
        }
        for text, reason in cases.items():
            path = self.tomlFile(text + "\n")
            self.assertEqual(self.refused(config=path), f"--config {path}: {reason}")

    def test_unreadable(self):
        """A missing file or one that is not UTF-8 is refused in one line."""
        missing = self.mktemp()
        self.assertEqual(
            self.refused(config=missing), f"--config {missing}: No such file or directory"
        )
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b'mode = "\xff"\n')
        self.assertEqual(self.refused(config=path), f"--config {path}: not valid UTF-8 text")


class ExampleFileTests(_Base):
    def test_exampleParses(self):
        """etc/proxyd.toml is valid TOML and sets nothing by default."""
        self.assertEqual(readFile(EXAMPLE), {})

    def test_everyOptionDocumented(self):
        """Each option has a commented example line that the checker accepts."""
        with open(EXAMPLE) as f:
            lines = [line[1:] for line in f if re.match(r"#[a-z-]+ = ", line)]
        documented = set()
        for line in lines:
            path = self.tomlFile(line)
            documented.update(readFile(path))
        self.assertEqual(documented, set(OPTIONS))
