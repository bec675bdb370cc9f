"""A development certificate authority kept in the state directory.

DEVELOPMENT ONLY. Its private key is a PEM file on disk (mode 0600), not an HSM key, and every
certificate it issues says so in its subject. Production credentials carry certificates issued by
the real CA (VGCA) and imported into rsign.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rsign.domain.certificates import IssuedCertificate
from rsign.domain.files import write_private

DEV_MARK = "DEVELOPMENT ONLY - NOT FOR PRODUCTION"


class DevCA:
    """Implements ``rsign.domain.certificates.CertificateIssuer`` for the embedded token only."""

    def __init__(self, directory: Path) -> None:
        self._dir = directory
        key_path, cert_path = directory / "ca-key.pem", directory / "ca-cert.pem"
        if not cert_path.exists():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._create(key_path, cert_path)
        loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        self._key = loaded
        self.certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())

    @staticmethod
    def _create(key_path: Path, cert_path: Path) -> None:
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rsign development"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, DEV_MARK),
                x509.NameAttribute(NameOID.COMMON_NAME, "rsign Development CA"),
            ]
        )
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .sign(key, hashes.SHA384())
        )
        write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode("ascii"),
        )
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    def trust_anchors(self) -> list[x509.Certificate]:
        return [self.certificate]

    def issue(self, spki_der: bytes, holder_name: str, user_id: str, agency: str, days: int = 730) -> IssuedCertificate:
        """Issue a signing certificate for a public key that lives in the HSM."""
        attrs = [x509.NameAttribute(NameOID.COUNTRY_NAME, "VN")]
        if agency:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, agency[:64]))
        attrs += [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, DEV_MARK),
            x509.NameAttribute(NameOID.USER_ID, user_id[:64]),
            x509.NameAttribute(NameOID.COMMON_NAME, holder_name[:64]),  # UTF8String by default
        ]
        eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION])
        return self._issue(spki_der, x509.Name(attrs), days, eku)

    def issue_audit(self, spki_der: bytes, days: int = 3650) -> IssuedCertificate:
        """Certificate for the audit log's checkpoint key (it signs checkpoints and exports)."""
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "VN"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rsign development"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, DEV_MARK),
                x509.NameAttribute(NameOID.COMMON_NAME, "rsign audit log signer"),
            ]
        )
        return self._issue(spki_der, name, days, None)

    def _issue(
        self, spki_der: bytes, subject: x509.Name, days: int, eku: x509.ExtendedKeyUsage | None
    ) -> IssuedCertificate:
        """End-entity certificate: digitalSignature + nonRepudiation, not a CA."""
        public_key = serialization.load_der_public_key(spki_der)
        now = dt.datetime.now(dt.UTC)
        usage = x509.KeyUsage(
            digital_signature=True,
            content_commitment=True,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)  # type: ignore[arg-type]
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
        )
        if eku is not None:
            builder = builder.add_extension(eku, critical=False)
        leaf = builder.sign(self._key, hashes.SHA384()).public_bytes(serialization.Encoding.DER)
        return IssuedCertificate(leaf, (self.certificate_der,))
