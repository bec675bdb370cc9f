"""``rsign keys rotate-internal``: rotate rsign's own HSM keys (not the officials' signing keys).

Run on the state directory, like the other local commands, while the server keeps serving: every
step is a short transaction, and the servers pick the new keys up by themselves.
"""

from __future__ import annotations

from pathlib import Path

import click
from rich.progress import Progress

from rsign.cli._common import console, friendly_errors, local_app, state_dir_option


@click.command("rotate-internal")
@click.argument("which", type=click.Choice(["totp-seal", "audit-mac", "audit-checkpoint"]))
@click.option(
    "--resume",
    is_flag=True,
    help="totp-seal: no new key; re-seal the seeds an interrupted rotation left under an older key.",
)
@click.option("--batch", type=click.IntRange(1, 10_000), default=200, show_default=True, help="Seeds per transaction.")
@state_dir_option
@friendly_errors
def rotate_internal(which: str, resume: bool, batch: int, state_dir: Path) -> None:
    """Rotate rsign's own key WHICH: the TOTP sealing key (then every seed is re-sealed inside the
    HSM adapter, in batches), the audit MAC key or the audit checkpoint key (the old ones are kept
    to verify older records, checkpoints and exports). Audited."""
    with local_app(state_dir) as app:
        if which == "totp-seal":
            with app.journal.read() as t:
                users = len(t.user_ids())
            with Progress(console=console, transient=True) as bar:
                task = bar.add_task("re-sealing TOTP seeds", total=users)

                def advance(n: int) -> None:
                    bar.advance(task, n)

                if resume:
                    rep = app.seal_rotation.reseal(batch, advance)
                else:
                    rep = app.seal_rotation.rotate(batch, advance)
            retired = f"; retired {', '.join(rep.retired)}" if rep.retired else ""
            click.echo(
                f"TOTP sealing key {rep.key}{retired}: {rep.resealed} seeds re-sealed, {rep.current} already under it"
            )
            if rep.unsealable:
                console.print(
                    f"[red]{len(rep.unsealable)} seeds fail their integrity check and were left as they are"
                    f" (reset them: rsign users reset-totp USER):[/red] {', '.join(rep.unsealable[:20])}",
                    soft_wrap=True,
                )
                raise SystemExit(1)
            return
        rotated = app.audit_rotation.rotate_mac() if which == "audit-mac" else app.audit_rotation.rotate_checkpoint()
        covered = "records" if which == "audit-mac" else "checkpoints"
        click.echo(
            f"audit {rotated.purpose} key {rotated.old_key} -> {rotated.new_key} (record {rotated.record_seq});"
            f" the old key stays to verify {covered} up to {rotated.old_last_seq}"
        )
        if rotated.new_certificate_sha256:
            click.echo(f"new audit certificate SHA-256: {rotated.new_certificate_sha256}")
