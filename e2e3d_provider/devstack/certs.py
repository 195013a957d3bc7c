"""A private certificate authority for the embedded stack: a CA and the certificates it signs.

The stack's internal SeaweedFS ports (master, volume, filer, their gRPC twins, admin) accept only
clients that show a certificate from this CA, so another local user who can reach 127.0.0.1 gets
a TLS handshake failure, not the data. Keys are written 0600 from their first byte.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from e2e3d_provider.devstack.private_files import write_secret

VALID_DAYS = 3650


@dataclass(frozen=True)
class CertPair:
    """Paths of a PEM certificate and its private key."""

    cert: Path
    key: Path


def _write(path: Path, data: bytes, secret: bool) -> None:
    if secret:
        write_secret(path, data.decode())
    else:
        path.write_bytes(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "e2e3d local stack"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def ensure_ca(folder: Path) -> CertPair:
    """The CA in ``folder`` (``ca.pem``, ``ca-key.pem``), made once and kept."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    pair = CertPair(folder / "ca.pem", folder / "ca-key.pem")
    if pair.cert.exists() and pair.key.exists():
        return pair
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("e2e3d local CA"))
        .issuer_name(_name("e2e3d local CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(pair.key, _key_pem(key), secret=True)
    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return pair


def ensure_cert(folder: Path, ca: CertPair, name: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> CertPair:
    """A certificate named ``name`` signed by ``ca``, valid as server and client for ``hosts``."""
    pair = CertPair(folder / f"{name}.pem", folder / f"{name}-key.pem")
    if pair.cert.exists() and pair.key.exists():
        return pair
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    _write(pair.key, _key_pem(key), secret=True)
    _write(pair.cert, cert.public_bytes(serialization.Encoding.PEM), secret=False)
    return pair
