"""The gRPC listener: one server per port; TLS from PEM files, optional mutual TLS, reload on
SIGHUP; plaintext only on a loopback address (or, explicitly, behind a TLS-terminating proxy).

The certificate files are read and checked here (readable, the key matches the certificate, a
client CA holds certificates) so that a mistake is one clear line at start-up or on reload, not
a handshake failure later. gRPC asks ``_fetch`` for the configuration on every new handshake:
a reload swaps it for new connections while established ones carry on.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import ipaddress
import logging
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from rsign.domain.errors import ConfigurationError

log = logging.getLogger(__name__)

# The audit record's client column holds at most this many characters (VARCHAR(128) on PostgreSQL).
CLIENT_MAX = 128


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # the server's certificate chain (PEM), leaf first
    key: Path  # its private key (PEM, unencrypted: the file's permissions protect it)
    client_ca: Path | None = None  # set: mutual TLS, clients must present a certificate it issued

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None


def split_listen(listen: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigurationError(f"listen address must be HOST:PORT, got {listen!r}")
    if int(port) > 65535:
        raise ConfigurationError(f"port {port} is out of range (0..65535) in listen address {listen!r}")
    return host.strip("[]"), int(port)


def is_loopback(listen: str) -> bool:
    host, _ = split_listen(listen)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve to a reachable address


def check_port_free(listen: str) -> None:
    """Fail with one clear line if something already listens on the port (checked before the HSM
    workers start; gRPC's own bind, with SO_REUSEPORT off, closes the remaining race)."""
    host, port = split_listen(listen)
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # Connections of a previous run still in TIME_WAIT do not make the port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1" if host == "localhost" else host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigurationError(
                    f"port {port} is already in use on {host} (another rsign serve?); not starting"
                ) from None
            raise ConfigurationError(f"cannot listen on {listen}: {exc.strerror or exc}") from None


def check_plaintext(listen: str, behind_tls_proxy: bool) -> None:
    """Refuse a plaintext listener that other machines can reach: PINs, one-time codes and
    session tokens would cross the network in the clear."""
    if is_loopback(listen):
        return
    if behind_tls_proxy:
        # The operator says a TLS-terminating proxy on this host or a trusted network segment
        # fronts the service; say so on every start so that it is never silently in effect.
        log.warning(
            "SERVING PLAINTEXT gRPC ON NON-LOOPBACK %s (--insecure-behind-tls-proxy): PINs, one-time codes and "
            "session tokens are unencrypted between the TLS proxy and rsign",
            listen,
        )
        return
    raise ConfigurationError(
        f"refusing plaintext on non-loopback {listen}: give --tls-cert and --tls-key, "
        "listen on 127.0.0.1, or pass --insecure-behind-tls-proxy"
    )


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _load(files: TlsFiles) -> grpc.ServerCertificateConfiguration:
    cert_pem = _read(files.cert, "TLS certificate")
    key_pem = _read(files.key, "TLS key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigurationError(f"{files.cert} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigurationError(f"{files.key} holds no unencrypted PEM private key") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != chain[0].public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise ConfigurationError(f"the TLS key {files.key} does not belong to the certificate {files.cert}")
    ca_pem = None
    if files.client_ca is not None:
        ca_pem = _read(files.client_ca, "TLS client CA")
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError:
            raise ConfigurationError(f"{files.client_ca} holds no PEM certificate") from None
    log.info(
        "TLS certificate %s (valid until %s)%s",
        chain[0].subject.rfc4514_string(),
        chain[0].not_valid_after_utc.isoformat(),
        f"; client certificates required, issued by {files.client_ca}" if ca_pem else "",
    )
    return grpc.ssl_server_certificate_configuration([(key_pem, cert_pem)], root_certificates=ca_pem)


def _not_after(cert: Path) -> float:
    """The leaf certificate's expiry (Unix seconds); 0 if the file changed into something unreadable
    since ``_load`` read it."""
    try:
        return x509.load_pem_x509_certificates(cert.read_bytes())[0].not_valid_after_utc.timestamp()
    except (OSError, ValueError):
        return 0.0


def check_metrics_listen(listen: str, allow_remote: bool) -> str:
    """The metrics endpoint's address ("PORT" alone: loopback). Metrics name methods, users'
    activity levels and the HSM's load, and the endpoint has no authentication or TLS: off a
    loopback address only when the operator says so (a scraper on another host, a firewall)."""
    if listen.isdigit():
        listen = f"127.0.0.1:{listen}"
    if not is_loopback(listen) and not allow_remote:
        raise ConfigurationError(
            f"refusing the metrics endpoint on non-loopback {listen}: it has no authentication; listen on"
            " 127.0.0.1, or pass --metrics-allow-remote (and restrict who reaches it)"
        )
    return listen


def tls_files(cert: str | Path | None, key: str | Path | None, client_ca: str | Path | None) -> TlsFiles | None:
    """The listener's TLS files from options or settings ("" or None: not given); None: plaintext."""
    if not cert and not key:
        if client_ca:
            raise ConfigurationError("a TLS client CA needs the server certificate and key too (--tls-cert, --tls-key)")
        return None
    if not cert or not key:
        raise ConfigurationError("the TLS certificate and key go together (--tls-cert and --tls-key)")
    return TlsFiles(Path(cert), Path(key), Path(client_ca) if client_ca else None)


def check_tls(files: TlsFiles) -> None:
    """Read and check the files now (a start-up refusal is one line, before anything starts)."""
    _load(files)


class ReloadableTls:
    """Server credentials whose certificate files are re-read by ``reload`` (on SIGHUP)."""

    def __init__(self, files: TlsFiles) -> None:
        self.files = files
        self._initial = _load(files)  # a mistake fails the start, before anything is served
        self.not_after = _not_after(files.cert)  # the served certificate's expiry (metrics)
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._lock = threading.Lock()

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,  # type: ignore[arg-type]  # grpc documents None as "no change"; the stubs omit it
            require_client_authentication=self.files.mutual,
        )

    def reload(self) -> bool:
        """Re-read the files; new connections get them. A bad file keeps the current ones."""
        try:
            config = _load(self.files)
        except ConfigurationError as exc:
            log.error("TLS reload refused, still serving the previous certificate: %s", exc.message)
            return False
        with self._lock:
            self._pending = config
        self.not_after = _not_after(self.files.cert)
        log.warning("TLS certificate files reloaded; new connections use them")
        return True

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Called by gRPC for every handshake: None keeps the current configuration.
        with self._lock:
            config, self._pending = self._pending, None
        return config


@functools.lru_cache(maxsize=1024)
def _certificate_subject(pem: bytes) -> tuple[str, str]:
    cert = x509.load_pem_x509_certificate(pem)
    return cert.subject.rfc4514_string(), hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def client_identity(ctx: grpc.ServicerContext) -> str:
    """The caller as the audit log records it: its address and, under mutual TLS, the subject
    of the certificate it presented (the handshake already verified it against the client CA)."""
    pems = ctx.auth_context().get("x509_pem_cert")
    if not pems:
        return (ctx.peer() or "")[:CLIENT_MAX]
    return describe_client(ctx.peer() or "", *_certificate_subject(pems[0]))


def describe_client(peer: str, subject: str, fingerprint: str) -> str:
    """``peer cert:subject`` in at most ``CLIENT_MAX`` characters: a long subject is cut and
    marked with the certificate's SHA-256 prefix, which still names the certificate."""
    peer = peer[:CLIENT_MAX]
    full = f"{peer} cert:{subject}"
    if len(full) <= CLIENT_MAX:
        return full
    tail = f"... sha256:{fingerprint[:16]}"
    keep = max(0, CLIENT_MAX - len(peer) - len(" cert:") - len(tail))
    return f"{peer} cert:{subject[:keep]}{tail}"[:CLIENT_MAX]
