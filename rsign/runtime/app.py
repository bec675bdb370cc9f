"""Composition root: builds the services from settings. Used by the server and the CLI."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from rsign.admin.service import AdminService
from rsign.audit.journal import AuditedStore
from rsign.audit.keys import AuditKeys
from rsign.audit.rotation import AuditKeyRotation
from rsign.audit.service import AuditService
from rsign.auth.passkeys import PasskeyService
from rsign.auth.seal_rotation import SealRotation
from rsign.auth.service import AuthService
from rsign.domain.certificates import CertificateIssuer, ExternalCAOnly
from rsign.domain.clock import Clock, SystemClock
from rsign.domain.settings import Settings
from rsign.hsm.ports import Hsm
from rsign.keys.service import KeyService
from rsign.runtime.config import init_lock
from rsign.signing.approvals import ApprovalService
from rsign.signing.service import SigningService
from rsign.store import Store
from rsign.store.opening import open_store


@dataclass
class App:
    settings: Settings
    clock: Clock
    store: Store
    journal: AuditedStore
    hsm: Hsm
    auth: AuthService
    signing: SigningService
    keys: KeyService
    audit: AuditService
    audit_hsm: Hsm
    admin: AdminService
    passkeys: PasskeyService
    approvals: ApprovalService  # passkey approval of signing activation
    # rsign's own keys (rsign keys rotate-internal): the audit MAC and checkpoint keys, the TOTP sealing key.
    audit_rotation: AuditKeyRotation
    seal_rotation: SealRotation

    def hsm_healthy(self) -> bool:
        healthy = getattr(self.hsm, "healthy", None)
        return bool(healthy()) if callable(healthy) else True

    def close(self) -> None:
        self.hsm.close()
        if self.audit_hsm is not self.hsm:
            self.audit_hsm.close()
        self.store.close()


def _close_when_started(started: Future[Hsm]) -> None:
    if started.exception() is None:
        started.result().close()


def build_app(settings: Settings, *, pool: bool, clock: Clock | None = None, hsm: Hsm | None = None) -> App:
    """``pool=True`` (server): HSM worker processes. ``pool=False`` (CLI): one in-process session.
    ``hsm`` overrides both (tests pass the real pool wrapped in a call counter)."""
    clk = clock or SystemClock()
    audit_pool: Future[Hsm] | None = None
    if pool:
        from rsign.hsm.pool import HsmPool

        # Audit MACs are computed inside the append transaction: a worker of their own keeps
        # them from queueing behind batch signing jobs while the write lock is held. Started
        # alongside the signing workers: each spends seconds loading a token of 25,000 keys.
        starter = ThreadPoolExecutor(1, thread_name_prefix="rsign-audit-hsm-start")
        audit_pool = starter.submit(HsmPool, settings.hsm, 1, warm=False)
        starter.shutdown(wait=False)
    # The HSM opens before the database: a token that cannot be opened (wrong module, wrong PIN)
    # fails the start before a database file is created.
    made: Hsm | None = None
    try:
        if hsm is None and pool:
            from rsign.hsm.pool import HsmPool

            hsm = made = HsmPool(settings.hsm, workers=settings.hsm_workers or None)
        elif hsm is None:
            from rsign.hsm.pkcs11_adapter import Pkcs11Token

            hsm = made = Pkcs11Token(settings.hsm)
        audit_hsm: Hsm = audit_pool.result() if audit_pool is not None else hsm
    except BaseException:
        if made is not None:
            made.close()
        if audit_pool is not None:
            audit_pool.add_done_callback(_close_when_started)
        raise
    try:
        store = open_store(settings.database_url, clk, busy_timeout=settings.database_busy_timeout_seconds)
    except BaseException:
        hsm.close()
        if audit_hsm is not hsm:
            audit_hsm.close()
        raise
    issuer: CertificateIssuer
    if settings.embedded is not None:
        with init_lock(settings.state_dir):
            issuer = settings.embedded.issuer(settings.state_dir)
    else:
        # A real HSM: no development CA is built or trusted; certificates are imported.
        issuer = ExternalCAOnly()
    audit_keys = AuditKeys.ensure(store, audit_hsm, issuer, clk)
    journal = AuditedStore(store, audit_keys, clk)
    auth = AuthService(journal, hsm, clk, settings)
    keys = KeyService(journal, hsm, clk, settings, issuer)
    signing = SigningService(journal, hsm, clk, settings, auth)
    # Anchor reads and writes go to the signing workers, not the audit worker (see AuditService).
    audit = AuditService(journal, audit_keys, clk, anchors=hsm)
    return App(
        settings=settings,
        clock=clk,
        store=store,
        journal=journal,
        hsm=hsm,
        auth=auth,
        signing=signing,
        keys=keys,
        audit=audit,
        audit_hsm=audit_hsm,
        admin=AdminService(journal, hsm, clk, auth, keys),
        passkeys=PasskeyService(journal, clk),
        approvals=ApprovalService(journal, clk, settings, signing.activation),
        audit_rotation=AuditKeyRotation(journal, audit_keys, audit.checkpoints, issuer, clk),
        seal_rotation=SealRotation(journal, hsm),
    )
