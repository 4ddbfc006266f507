"""Certificates for wire tests, made with `cryptography`: a CA, a server and client signed
by it, and the refused kinds (another CA's client, an expired client)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DAY = datetime.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


class CA:
    def __init__(self, cn: str) -> None:
        self.cn = cn
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(_name(cn))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - DAY)
            .not_valid_after(now + DAY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def write(self, path: Path) -> Path:
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def issue(
        self, where: Path, cn: str, expired: bool = False, ips: tuple[str, ...] = ("127.0.0.1",)
    ) -> Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        start, end = (now - 3 * DAY, now - 2 * DAY) if expired else (now - DAY, now + DAY)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips),
                    ]
                ),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        pair = Pair(where / f"{cn}.pem", where / f"{cn}.key")
        pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        pair.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        pair.key.chmod(0o600)
        return pair


@dataclass(frozen=True)
class Certs:
    ca: Path
    server: Pair
    client: Pair
    other_ca_client: Pair
    expired_client: Pair


def make_certs(where: Path, server_ips: tuple[str, ...] = ("127.0.0.1",)) -> Certs:
    where.mkdir(parents=True, exist_ok=True)
    ca, other = CA("ferry-test-ca"), CA("some-other-ca")
    return Certs(
        ca=ca.write(where / "ca.pem"),
        server=ca.issue(where, "server", ips=server_ips),
        client=ca.issue(where, "client"),
        other_ca_client=other.issue(where, "intruder"),
        expired_client=ca.issue(where, "expired", expired=True),
    )
