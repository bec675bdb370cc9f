"""``rsign audit``: inspect, export and verify the audit log on a state directory, or an export offline."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rsign.cli._common import F, console, friendly_errors, local_app, state_dir_option
from rsign.cli._output import print_events
from rsign.domain.errors import FailedPrecondition, InvalidRequest
from rsign.domain.events import EventFilter
from rsign.domain.principal import LOCAL_OPERATOR


@click.group()
def audit() -> None:
    """Inspect and verify the audit log."""


def iso_bound(text: str) -> str:
    """'2026-11-26' or '2026-11-26T08:00:00' (UTC) -> the audit log's fixed-width ISO form."""
    if not text:
        return ""
    from datetime import UTC, datetime

    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"not an ISO 8601 time: {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def filter_options(fn: F) -> F:
    for opt in reversed(
        [
            click.option(
                "--from", "from_", default="", help="From this UTC time (ISO 8601, e.g. 2026-11-26T00:00:00)."
            ),
            click.option("--to", default="", help="Before this UTC time (ISO 8601)."),
            click.option("--user", default="", help="Actor (user id)."),
            click.option("--credential", default="", help="Credential id."),
            click.option("--agency", default="", help="Agency."),
            click.option("--action", default="", help="Action, e.g. sign.hash, auth.login, sad.refuse."),
            click.option("--result", default="", type=click.Choice(["", "success", "failure"])),
        ]
    ):
        fn = opt(fn)
    return fn


def _filter(from_: str, to: str, user: str, credential: str, agency: str, action: str, result: str) -> EventFilter:
    return EventFilter(
        from_ts=iso_bound(from_),
        to_ts=iso_bound(to),
        actor=user,
        credential_id=credential,
        agency=agency,
        action=action,
        result=result,
    )


@audit.command("verify")
@state_dir_option
@friendly_errors
def audit_verify(state_dir: Path) -> None:
    """Verify the stored log (chain, HSM MACs, signed checkpoints); exit 0 when intact, 1 naming
    the first bad record or checkpoint otherwise."""
    with local_app(state_dir) as app:
        report = app.audit.verify_log(LOCAL_OPERATOR)
    if report.ok:
        a = report.anchor
        click.echo(
            f"audit log intact: {report.records} records, {report.checkpoints} signed checkpoints"
            f" (last at {report.last_checkpoint_seq}); "
            + (f"HSM anchor at record {a.seq} (epoch {a.epoch})" if a else "no HSM anchor yet")
        )
        return
    click.echo(f"audit log BROKEN at record {report.bad_seq}: {report.problem}", err=True)
    sys.exit(1)


@audit.command("checkpoint")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the latest checkpoint to this file, for `verify-export --after` later.",
)
@state_dir_option
@friendly_errors
def audit_checkpoint(out: Path | None, state_dir: Path) -> None:
    """Sign a checkpoint now (the server does so on its own every N records or T seconds)."""
    with local_app(state_dir) as app:
        cp = app.audit.checkpoint()
        kept = app.audit.kept_checkpoint() if out is not None else b""
    click.echo(f"checkpoint signed at record {cp.seq}" if cp else "nothing new since the last checkpoint")
    if out is not None:
        out.write_bytes(kept)
        click.echo(f"wrote {out}: keep it; `rsign audit verify-export EXPORT --after {out}` checks a later export")


@audit.command("accept-rollback")
@click.option("--reason", required=True, help="Why the rollback is accepted (recorded in the audit log).")
@state_dir_option
@friendly_errors
def audit_accept_rollback(reason: str, state_dir: Path) -> None:
    """Accept a log that is behind its HSM anchor (restored from a backup, rolled back): re-anchor
    the HSM at the database's current head, which must verify on its own, and record
    audit.anchor_reset with both anchors. Servers halted on the log resume."""
    with local_app(state_dir) as app:
        done = app.audit.accept_rollback(reason)
    old = f"record {done.old.seq} (epoch {done.old.epoch})" if done.old else "none"
    click.echo(f"found: {done.found}")
    click.echo(
        f"HSM anchor moved from {old} to record {done.new.seq} (epoch {done.new.epoch});"
        f" recorded as audit record {done.record_seq} (audit.anchor_reset)"
    )


@audit.command("csr")
@state_dir_option
@friendly_errors
def audit_csr(state_dir: Path) -> None:
    """Print a PKCS#10 request for the audit checkpoint key (signed in the HSM), for your CA."""
    with local_app(state_dir) as app:
        click.echo(app.keys.checkpoint_csr().decode("ascii"), nl=False)


@audit.command("certificate")
@state_dir_option
@friendly_errors
def audit_certificate(state_dir: Path) -> None:
    """Print the audit certificate (PEM, then its issuers) and its SHA-256: the certificate to pin
    with `verify-export --audit-cert`, whose SHA-256 every verified export names."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    with local_app(state_dir) as app:
        chain = app.audit.certificate_chain()
    if not chain:
        raise FailedPrecondition(
            "the audit checkpoint key has no certificate yet: `rsign audit csr`, then `rsign audit import-certificate`"
        )
    leaf = x509.load_der_x509_certificate(chain[0])
    for der in chain:
        click.echo(x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode("ascii"), nl=False)
    # On stderr: `rsign audit certificate > audit.pem` keeps the PEM file clean for --audit-cert.
    click.echo(f"subject: {leaf.subject.rfc4514_string()} (until {leaf.not_valid_after_utc.date()})", err=True)
    click.echo(f"SHA-256: {hashlib.sha256(chain[0]).hexdigest()}", err=True)


@audit.command("import-certificate")
@click.argument("chain", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@state_dir_option
@friendly_errors
def audit_import_certificate(chain: Path, state_dir: Path) -> None:
    """Install the audit checkpoint key's certificate chain (PEM, leaf first); it must certify
    that key and chain to <state-dir>/trust-anchors/. Checkpoints and exports need it."""
    with local_app(state_dir) as app:
        leaf = app.keys.import_checkpoint_certificate(chain.read_bytes())
    until = leaf.not_valid_after_utc.date()
    click.echo(f"audit certificate installed: {leaf.subject.rfc4514_string()} (until {until})")


@audit.command("export")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Export file to write.")
@filter_options
@state_dir_option
@friendly_errors
def audit_export(out: Path, state_dir: Path, **flt: str) -> None:
    """Write a self-contained, signed export (records, checkpoints, audit certificate)."""
    with local_app(state_dir) as app:
        lines = app.audit.export(LOCAL_OPERATOR, _filter(**flt))
        n = 0
        with console.status("exporting") as status, open(out, "wb") as f:
            for line in lines:
                f.write(line)
                n += 1
                if n % 5000 == 0:
                    status.update(f"exporting: {n} lines")
    click.echo(f"wrote {out} ({n} lines)")


_AUDIT_CERT = click.option(
    "--audit-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Pin the audit certificate (DER or PEM) the export must be signed with.",
)


def _pinned(audit_cert: Path | None) -> bytes | None:
    if audit_cert is None:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    data = audit_cert.read_bytes()
    cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    return cert.public_bytes(Encoding.DER)


@audit.command("verify-export")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_AUDIT_CERT
@click.option(
    "--after",
    "after_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A checkpoint file kept earlier (`audit checkpoint --out`, `audit extract-checkpoint`): the export"
    " must extend it, or the log was rolled back.",
)
def audit_verify_export(file: Path, audit_cert: Path | None, after_file: Path | None) -> None:
    """Verify an export offline (no database, no HSM): exit 0 when intact, 1 naming the problem."""
    from rsign.audit.offline import read_checkpoint_file, verify_export

    after = None
    if after_file is not None:
        try:
            after = read_checkpoint_file(after_file.read_bytes())
        except ValueError as exc:
            click.echo(f"FAILED: {after_file}: {exc}", err=True)
            sys.exit(1)
    rep = verify_export(file, _pinned(audit_cert), after)
    click.echo(
        f"{rep.records} records, {rep.links} links (other scopes), {rep.checkpoints} checkpoints, head {rep.head_seq};"
        f" audit certificate SHA-256 {rep.certificate_sha256}"
    )
    for n, sha in enumerate(rep.previous_certificates_sha256):
        click.echo(f"earlier audit certificate {n + 1} (rotated out) SHA-256 {sha}")
    if rep.anchor is not None:
        click.echo(f"HSM anchor at record {rep.anchor['seq']} (epoch {rep.anchor['epoch']})")
    if rep.ok:
        if after is not None:
            click.echo(f"extends the checkpoint kept in {after_file} (record {after.seq})")
        click.echo("export intact")
        return
    for p in rep.problems:
        click.echo(f"FAILED: {p}", err=True)
    sys.exit(1)


@audit.command("extract-checkpoint")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint file to write.")
@_AUDIT_CERT
def audit_extract_checkpoint(file: Path, out: Path, audit_cert: Path | None) -> None:
    """Keep an intact export's latest checkpoint in a small file (offline), for `verify-export
    --after` on a later export."""
    import base64

    from rsign.audit.offline import checkpoint_file, verify_export

    rep = verify_export(file, _pinned(audit_cert))
    cp = rep.last_checkpoint
    if not rep.ok or cp is None:
        for p in rep.problems or ["the export has no checkpoint"]:
            click.echo(f"FAILED: {p}", err=True)
        sys.exit(1)
    sig = base64.b64decode(cp["signature"])
    cert_sha256 = rep.last_checkpoint_certificate_sha256  # its key's (an earlier one just after a rotation)
    out.write_bytes(checkpoint_file(cp["seq"], cp["head_hash"], cp["ts"], sig, cert_sha256))
    click.echo(f"wrote {out}: checkpoint at record {cp['seq']} ({cp['ts']})")


@audit.command("tail")
@click.option("-n", "count", default=20, show_default=True, help="How many records.")
@filter_options
@state_dir_option
@friendly_errors
def audit_tail(count: int, state_dir: Path, **flt: str) -> None:
    """Show the latest records as a table."""
    with local_app(state_dir) as app:
        rows = app.audit.tail(_filter(**flt), count)
    print_events(rows, f"last {len(rows)} audit records")


@audit.command("search")
@click.option("--limit", default=100, show_default=True)
@filter_options
@state_dir_option
@friendly_errors
def audit_search(limit: int, state_dir: Path, **flt: str) -> None:
    """Find records by time range, user, credential, agency, action and result."""
    with local_app(state_dir) as app:
        page = app.audit.list_events(LOCAL_OPERATOR, _filter(**flt), limit, "")
    print_events(
        page.events, f"{len(page.events)} matching records" + (" (more: narrow the filter)" if page.next_token else "")
    )
