"""
Upstream TLS verification: real handshakes in memory (iosim), a server
certificate from a throwaway CA, proxyd's client creator on the other side.
"""

from twisted.internet import ssl as tssl
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test.iosim import connectedServerAndClient
from twisted.trial.unittest import SynchronousTestCase

from proxyd.ca import CertificateAuthority, LeafFactory
from proxyd.tlsconfig import VerifyingCreator, describeTLSFailure, upstreamCreator


class _Recorder(Protocol):
    def __init__(self):
        self.lost = None
        self.data = b""

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost = reason


class VerifyTests(SynchronousTestCase):
    def setUp(self):
        self.ca = CertificateAuthority.create(self.mktemp())
        leaves = LeafFactory(self.ca, clock=Clock())
        self.leaf = self.successResultOf(leaves.leafFor("right.test"))
        self.trust = tssl.trustRootFromCertificates([tssl.Certificate.loadPEM(self.ca.certPEM)])

    def handshake(self, name, trust=None, creator=None):
        serverOptions = tssl.CertificateOptions(
            privateKey=self.leaf.key, certificate=self.leaf.certificate, acceptableProtocols=[b"http/1.1"]
        )
        server = _Recorder()
        client = _Recorder()
        serverFactory = TLSMemoryBIOFactory(serverOptions, False, Factory.forProtocol(lambda: server))
        if creator is None:
            creator = VerifyingCreator(name, trust or self.trust)
        clientFactory = TLSMemoryBIOFactory(creator, True, Factory.forProtocol(lambda: client))
        clientTLS, serverTLS, pump = connectedServerAndClient(
            lambda: serverFactory.buildProtocol(None), lambda: clientFactory.buildProtocol(None), greet=False
        )
        pump.flush()
        clientTLS.write(b"hello")
        pump.flush()
        return client, server, clientTLS

    def test_rightNameVerifies(self):
        """A certificate for the name asked for, from a trusted CA, is accepted."""
        client, server, clientTLS = self.handshake("right.test")
        self.assertIsNone(client.lost)
        peer = clientTLS.getPeerCertificate()
        self.assertIsNotNone(peer)
        self.assertEqual(peer.to_cryptography().serial_number, self.leaf.serial)

    def test_wrongNameRefused(self):
        """
        A certificate from a trusted CA but for another name is refused, and
        the reason says so (this once slipped through: proxyd's callback had
        replaced the one that checks the name).
        """
        client, server, clientTLS = self.handshake("wrong.test")
        self.assertEqual(server.data, b"")
        self.assertIsInstance(client.lost, Failure)
        self.assertIn("name mismatch", describeTLSFailure(client.lost, clientTLS, "wrong.test"))

    def test_unknownIssuerNamed(self):
        """A certificate from an untrusted CA is refused as 'unknown issuer'."""
        other = CertificateAuthority.create(self.mktemp())
        trust = tssl.trustRootFromCertificates([tssl.Certificate.loadPEM(other.certPEM)])
        client, server, clientTLS = self.handshake("right.test", trust)
        self.assertEqual(server.data, b"")
        self.assertIn("unknown issuer", describeTLSFailure(client.lost, clientTLS, "right.test"))


    def test_verifiedUnlessInsecure(self):
        """
        upstreamCreator verifies by default: a certificate for another name
        is refused; only insecure=True (--upstream-insecure) accepts it.
        """
        client, server, clientTLS = self.handshake("wrong.test", creator=upstreamCreator("wrong.test", self.trust))
        self.assertIsNotNone(client.lost)
        client, server, clientTLS = self.handshake("wrong.test", creator=upstreamCreator("wrong.test", self.trust, insecure=True))
        self.assertIsNone(client.lost)
        self.assertEqual(clientTLS.getPeerCertificate().to_cryptography().serial_number, self.leaf.serial)
