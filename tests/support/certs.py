"""Throwaway X.509 material for TLS and mTLS tests: a CA, a server cert and a client cert.

Everything is generated in memory with ``cryptography`` (EC P-256, valid for a day) and written
as PEM files; nothing here is meant to protect anything.
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

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TlsFiles:
    """PEM paths: the CA certificate, the server's cert/key, and a client's cert/key (both CA-signed)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "genoserve tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(subject: str, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
    )


def make_ca(common_name: str = "genoserve test CA") -> tuple[x509.Certificate, PrivateKey]:
    """A self-signed CA certificate and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(common_name, _name(common_name), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca_cert: x509.Certificate,
    ca_key: PrivateKey,
    common_name: str,
    *,
    server: bool,
    dns_names: tuple[str, ...] = (),
    ip_addresses: tuple[str, ...] = (),
) -> tuple[x509.Certificate, PrivateKey]:
    """A leaf certificate signed by the CA: for a server (SANs required) or for a client."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(common_name, ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: PrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def write_tls_files(directory: Path, prefix: str = "") -> TlsFiles:
    """A fresh CA, a server cert for ``localhost`` and ``127.0.0.1``, and a client cert, as PEM files.

    ``prefix`` lets several independent CAs live in one directory (e.g. ``"other-"``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca(f"genoserve test CA {prefix}".strip())
    server_cert, server_key = issue(
        ca_cert, ca_key, "localhost", server=True, dns_names=("localhost",), ip_addresses=("127.0.0.1",)
    )
    client_cert, client_key = issue(ca_cert, ca_key, "genoserve test client", server=False)
    return TlsFiles(
        ca_cert=_write_cert(directory / f"{prefix}ca.pem", ca_cert),
        ca_key=_write_key(directory / f"{prefix}ca-key.pem", ca_key),
        server_cert=_write_cert(directory / f"{prefix}server.pem", server_cert),
        server_key=_write_key(directory / f"{prefix}server-key.pem", server_key),
        client_cert=_write_cert(directory / f"{prefix}client.pem", client_cert),
        client_key=_write_key(directory / f"{prefix}client-key.pem", client_key),
    )
