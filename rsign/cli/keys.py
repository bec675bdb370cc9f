"""``rsign keys``: HSM keys and certificates, locally or through a server (--server --as)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from rsign.cli._common import F, friendly_errors, state_dir_option
from rsign.cli._output import print_cred
from rsign.cli._remote import admin_target, remote_requested, server_options_on_every_command, with_server_options
from rsign.domain.errors import InvalidRequest
from rsign.domain.principal import LOCAL_OPERATOR, CredentialStatus


@click.group()
@with_server_options
def keys() -> None:
    """Generate and manage HSM keys and certificates (locally, or through a server with --server --as)."""


@keys.command("generate")
@click.argument("credential_id")
@click.option(
    "--algorithm",
    required=True,
    type=click.Choice(["rsa-2048", "rsa-3072", "ec-p256", "ec-p384"], case_sensitive=False),
)
@click.option("--holder", default="", help="User id of the key holder (a personal credential).")
@click.option("--seal-agency", default="", help="Instead of --holder: an organisation seal of this agency.")
@click.option("--seal-user", "seal_users", multiple=True, help="A user allowed to activate the seal (repeatable).")
@click.option("--multisign", type=int, default=None, help="Most hashes one authorization may cover.")
@state_dir_option
@friendly_errors
def keys_generate(
    credential_id: str,
    algorithm: str,
    holder: str,
    seal_agency: str,
    seal_users: tuple[str, ...],
    multisign: int | None,
    state_dir: Path,
) -> None:
    """Generate a key pair inside the HSM (embedded token: with a development certificate; real HSM:
    no certificate until one is imported with import-certificate)."""
    with admin_target(state_dir) as admin:
        cred = admin.generate(LOCAL_OPERATOR, credential_id, algorithm, holder, multisign, seal_agency, seal_users)
    click.echo(
        f"generated {cred.credential_id} ({cred.key_algorithm}, key version {cred.key_version})"
        f" for {cred.holder_user_id or 'the seal of ' + cred.agency}"
    )


@keys.command("destroy")
@click.argument("credential_id")
@state_dir_option
@friendly_errors
def keys_destroy(credential_id: str, state_dir: Path) -> None:
    """Destroy a revoked credential's keys: needs two different key officers, through a server."""
    if not remote_requested():
        raise InvalidRequest("destroying keys needs two authenticated key officers: use --server HOST:PORT --as USER")
    with admin_target(state_dir) as admin:
        state = admin.destroy(LOCAL_OPERATOR, credential_id)
    done = state == CredentialStatus.DESTROYED
    click.echo("destroyed" if done else "requested: a second, different key officer must confirm")


def _cred_command(name: str, help_text: str) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        return keys.command(name, help=help_text)(  # type: ignore[return-value]
            click.argument("credential_id")(state_dir_option(friendly_errors(fn)))
        )

    return deco


@_cred_command("csr", "Print a PKCS#10 request for the current key, signed inside the HSM.")
def keys_csr(credential_id: str, state_dir: Path) -> None:
    with admin_target(state_dir) as admin:
        click.echo(admin.csr(LOCAL_OPERATOR, credential_id).decode("ascii"), nl=False)


@keys.command("import-certificate")
@click.argument("credential_id")
@click.argument("chain", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@state_dir_option
@friendly_errors
def keys_import(credential_id: str, chain: Path, state_dir: Path) -> None:
    """Install a CA-issued certificate chain (PEM, leaf first); it must certify the credential's key
    and chain to a trust anchor (<state-dir>/trust-anchors/*.pem)."""
    with admin_target(state_dir) as admin:
        print_cred(admin.import_certificate(LOCAL_OPERATOR, credential_id, chain.read_bytes()))


@_cred_command("rotate", "New key version in the HSM; the old one stops signing, its certificate stays.")
def keys_rotate(credential_id: str, state_dir: Path) -> None:
    with admin_target(state_dir) as admin:
        print_cred(admin.rotate(LOCAL_OPERATOR, credential_id))


@_cred_command("disable", "Stop the credential from signing (reversible).")
def keys_disable(credential_id: str, state_dir: Path) -> None:
    with admin_target(state_dir) as admin:
        print_cred(admin.set_enabled(LOCAL_OPERATOR, credential_id, False))


@_cred_command("enable", "Re-enable a disabled credential.")
def keys_enable(credential_id: str, state_dir: Path) -> None:
    with admin_target(state_dir) as admin:
        print_cred(admin.set_enabled(LOCAL_OPERATOR, credential_id, True))


@keys.command("revoke")
@click.argument("credential_id")
@click.option(
    "--reason",
    required=True,
    type=click.Choice(["job change", "retirement", "agency request", "key compromise", "other"]),
)
@state_dir_option
@friendly_errors
def keys_revoke(credential_id: str, reason: str, state_dir: Path) -> None:
    """Revoke (final)."""
    with admin_target(state_dir) as admin:
        print_cred(admin.revoke(LOCAL_OPERATOR, credential_id, reason))


@_cred_command("history", "Every key version with its status and certificate subject.")
def keys_history(credential_id: str, state_dir: Path) -> None:
    from cryptography import x509

    with admin_target(state_dir) as admin:
        for v in admin.history(LOCAL_OPERATOR, credential_id):
            if not v.certificate:
                click.echo(f"v{v.version}\t{v.status}\tno certificate imported yet")
                continue
            cert = x509.load_der_x509_certificate(v.certificate)
            click.echo(
                f"v{v.version}\t{v.status}\t{cert.subject.rfc4514_string()}\tuntil {cert.not_valid_after_utc.date()}"
            )


@keys.command("search")
@click.option("--agency", default="")
@click.option("--holder", default="", help="Holder name, diacritic-insensitive.")
@click.option("--status", default="", type=click.Choice(["", *(s.value for s in CredentialStatus)]))
@click.option("--expires-within", "days", default=0, help="Only certificates expiring within N days.")
@click.option("--limit", default=100, show_default=True)
@state_dir_option
@friendly_errors
def keys_search(agency: str, holder: str, status: str, days: int, limit: int, state_dir: Path) -> None:
    """Find credentials by agency, holder name, status and expiry window."""
    with admin_target(state_dir) as admin:
        for c in admin.search_credentials(LOCAL_OPERATOR, agency, holder, status, days, limit):
            print_cred(c)


@keys.command("expiring")
@click.option("--days", default=30, show_default=True)
@click.option("--agency", default="")
@state_dir_option
@friendly_errors
def keys_expiring(days: int, agency: str, state_dir: Path) -> None:
    """Expiry report: active credentials whose certificate expires within DAYS."""
    with admin_target(state_dir) as admin:
        found = admin.expiring(LOCAL_OPERATOR, days, agency)
    for c in found:
        print_cred(c)
    click.echo(f"{len(found)} certificate(s) expire within {days} days")


server_options_on_every_command(keys)


def _attach_rotate_internal() -> None:
    # rsign's own keys rotate under `rsign keys` too (rsign.cli.rotate_internal), next to the officials'.
    from rsign.cli.rotate_internal import rotate_internal

    keys.add_command(rotate_internal)


_attach_rotate_internal()
