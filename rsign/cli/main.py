"""``rsign``: serve, manage users and keys, verify the audit log, run the demo.

State-changing commands open the state directory directly (initialising it on first use) and work
whether or not a server is running on it: SQLite serialises writers, SoftHSMv2 shares the token.

This module is the entry point: the top-level group and the list of command groups. Shared options
and helpers live in ``_common`` (--state-dir, errors, the local application) and ``_remote``
(--server/--as, where an administration command acts); each command group has its own module.
"""

from __future__ import annotations

import logging

import click

from rsign.cli.audit import audit
from rsign.cli.dev import bench, client, demo
from rsign.cli.keys import keys
from rsign.cli.provision import provision
from rsign.cli.serve import serve
from rsign.cli.state import backup, init, restore
from rsign.cli.users import users


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level; errors show their details.")
@click.version_option(package_name="rsign", prog_name="rsign")
def main(verbose: bool) -> None:
    """rsign: centralized remote signing with keys kept in a PKCS#11 HSM."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


for _command in (serve, init, users, keys, audit, backup, restore, demo, provision, bench, client):
    main.add_command(_command)


if __name__ == "__main__":
    main()
