"""Leaf certificate cost and memory for proxyd.ca: min and median of 5 batches per CA kind, cache-hit cost, RSS per cached leaf."""
import gc, os, statistics, tempfile, time, datetime
# Run from the repository root with proxyd importable: python bench/leaves.py
from twisted.internet.task import Clock
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from proxyd.ca import CertificateAuthority, LeafFactory

def rsaCA(bits):
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa ca")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=3000))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
        .sign(key, hashes.SHA256()))
    return CertificateAuthority(cert, key, "mem", "mem")

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

clock = Clock(); clock.advance(time.time())
p256 = CertificateAuthority.inDirectory(tempfile.mkdtemp())
for label, ca, kt, n in (("P-256 CA, ecdsa leaf key", p256, "ecdsa", 400), ("P-256 CA, rsa leaf key", p256, "rsa", 400),
                         ("RSA-2048 CA, ecdsa leaf key", rsaCA(2048), "ecdsa", 200), ("RSA-4096 CA, ecdsa leaf key", rsaCA(4096), "ecdsa", 50)):
    f = LeafFactory(ca, kt, clock=clock, cacheSize=100000, runner=lambda fn, *a: __import__("twisted.internet.defer", fromlist=["x"]).maybeDeferred(fn, *a))
    batches = []
    for b in range(5):
        t = time.perf_counter()
        for i in range(n):
            f.leafFor("host-%d-%d.example.com" % (b, i))
        batches.append((time.perf_counter() - t) / n * 1e3)
    print("%-28s miss: min %.2f ms, median %.2f ms per leaf" % (label, min(batches), statistics.median(batches)))
f = LeafFactory(p256, "ecdsa", clock=clock, cacheSize=100000)
N = 10000
gc.collect(); r0 = rss()
for i in range(N): f.leafFor("host-number-%d.some-site.example.com" % i)
gc.collect(); r1 = rss()
t = time.perf_counter()
for i in range(N): f.leafFor("host-number-%d.some-site.example.com" % i)
hit = (time.perf_counter() - t) / N * 1e6
print("RSS per cached leaf: %.0f bytes (%d leaves); hit: %.1f us" % ((r1 - r0) / N, N, hit))
