"""``rsign provision``: the province's CSV files into users and credentials (validate, then apply)."""

from __future__ import annotations

from pathlib import Path

import click

from rsign.cli._common import EXAMPLES, friendly_errors, local_app, state_dir_option
from rsign.cli._output import stage_bars


@click.command()
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=EXAMPLES,
    show_default=True,
    help="Folder with the deployment's CSV files.",
)
@click.option(
    "--health-education",
    is_flag=True,
    help="Also enrol the 25,065 health and education officials with EC P-256 credentials.",
)
@state_dir_option
@friendly_errors
def provision(data: Path, health_education: bool, state_dir: Path) -> None:
    """Enrol users and generate credentials from the province's CSV files (idempotent).

    Validates every file first: a malformed row is reported with its line number and nothing is
    imported. New users' initial PINs and authenticator URIs go to an enrolment-letters file (0600).
    """
    from rsign.runtime import provision as prov

    plan = prov.load(data, health_education=health_education)
    click.echo(f"{len(plan.users)} users and {len(plan.credentials)} credentials in {data}")
    with local_app(state_dir, pool=True, create=True) as app:
        prog, update = stage_bars(lambda stage: f"{stage:12}")
        with prog:
            summary = prov.apply(app, plan, update)
    click.echo(
        f"created {summary.users_created} users and {summary.credentials_created} credentials"
        f" ({summary.users_total} and {summary.credentials_total} in the plan)"
    )
    if summary.letters:
        click.echo(f"enrolment letters (initial PINs, authenticator URIs; mode 0600): {summary.letters}")
