"""
The listener-TLS and reverse-mode options as the command line gives them:
every refusal one line naming the option (and the file), and the fields a
good set makes.
"""

import pytest
from twisted.internet.testing import MemoryReactor

from proxyd.config import ConfigError, fromOptions
from tests.unit.test_tlsserver import PKI


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return PKI(tmp_path_factory.mktemp("pki"))


def config(**options):
    return fromOptions({k.replace("_", "-"): v for k, v in options.items()}, MemoryReactor())


def refused(**options):
    with pytest.raises(ConfigError) as e:
        config(**options)
    message = str(e.value)
    assert "\n" not in message
    return message


def test_reverseNeedsCertificateAndBackend(pki):
    assert refused(mode="reverse").startswith("--tls-cert: reverse mode needs")
    assert refused(mode="reverse", tls_cert=[pki.aChain], tls_key=[pki.aKeyFile]).startswith(
        "--upstream: reverse mode needs at least one backend")


def test_pairsMustMatch(pki):
    assert refused(tls_cert=[pki.aChain, pki.wildCert], tls_key=[pki.aKeyFile]) == (
        "--tls-cert: give --tls-cert and --tls-key in pairs (2 certificates, 1 keys)")


def test_tlsOptionsNeedACertificate():
    assert refused(tls_min="1.3") == "--tls-min: needs --tls-cert and --tls-key (the listener's certificate)"
    assert refused(client_ca="/x").startswith("--client-ca: needs --tls-cert")


def test_backendsOnlyInReverse():
    assert refused(upstream=["http://127.0.0.1:1"]) == "--upstream: only in --mode=reverse (this is forward)"
    assert refused(mode="mitm", route=["a=http://b"]).startswith("--route: only in --mode=reverse")


def test_fileProblemsNameTheFile(pki):
    assert refused(mode="reverse", tls_cert=[pki.missing], tls_key=[pki.aKeyFile], upstream=["http://b"]).startswith(
        "--tls-cert " + pki.missing + ": cannot read")
    message = refused(mode="reverse", tls_cert=[pki.aChain], tls_key=[pki.oldKey], upstream=["http://b"])
    assert message.startswith("--tls-key " + pki.oldKey + ": does not match")
    assert refused(tls_cert=[pki.expired], tls_key=[pki.oldKey]).startswith("--tls-cert " + pki.expired + ": certificate expired")
    assert "wrong or missing passphrase" in refused(tls_cert=[pki.aChain], tls_key=[pki.aKeyEncrypted])
    assert refused(tls_cert=[pki.aChain], tls_key=[pki.aKeyFile], tls_min="1.1") == "--tls-min 1.1: must be 1.2 or 1.3"


def test_badBackend(pki):
    message = refused(mode="reverse", tls_cert=[pki.aChain], tls_key=[pki.aKeyFile], upstream=["ftp://x/"])
    assert message.startswith("--upstream: ") and "ftp://x/" in message
    message = refused(mode="reverse", tls_cert=[pki.aChain], tls_key=[pki.aKeyFile], upstream=["http://b"], route=["nohost"])
    assert message.startswith("--route: ")


def test_goodReverse(pki):
    c = config(mode="reverse", tls_cert=[pki.aChain, pki.wildCert], tls_key=[pki.aKeyFile, pki.wildKeyFile],
               tls_min="1.3", client_ca=pki.caFile, upstream=["http://10.0.0.1:8000", "https://app.internal/x"],
               route=["*.api.example=http://10.0.0.9"])
    assert c.listen == ("tcp:8443:interface=127.0.0.1",)
    assert c.serverTLS.names[:2] == ("a.example", "www.a.example")
    assert (c.tlsMin, c.clientCA) == ("1.3", pki.caFile)
    assert [b.url for b in c.upstreams] == ["http://10.0.0.1:8000", "https://app.internal/x"]
    assert c.routes[0][0] == "*.api.example"


def test_httpsProxy(pki):
    """In forward mode a certificate makes the proxy port speak TLS; no backends needed."""
    c = config(tls_cert=[pki.aChain], tls_key=[pki.aKeyFile])
    assert c.serverTLS is not None and c.upstreams == ()
