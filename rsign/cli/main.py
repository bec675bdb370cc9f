"""``rsign``: serve, manage users and keys, verify the audit log, run the demo, sign PDF files.

Commands open the state directory directly and work whether or not a server is running on it:
SQLite serialises writers, SoftHSMv2 shares the token. Only serve, init, demo, provision and
users add create a state directory; every other command refuses a folder that is not one.

This module is the entry point: the top-level group and the list of command groups. Shared options
and helpers live in ``_common`` (--state-dir, errors, the local application) and ``_remote``
(--server/--as, where an administration command acts); each command group has its own module.

Every group but ``client`` needs the server's dependencies (the ``server`` extra); they are
imported when the command runs, so that ``rsign client ...`` works in a client-only install.
"""

from __future__ import annotations

import logging

import click

from rsign.cli._lazy import LazyGroup
from rsign.cli.client import client

# Command name -> "module:attribute", imported on use.
SERVER_COMMANDS = {
    "serve": "rsign.cli.serve:serve",
    "init": "rsign.cli.state:init",
    "users": "rsign.cli.users:users",
    "keys": "rsign.cli.keys:keys",
    "audit": "rsign.cli.audit:audit",
    "db": "rsign.cli.db:db",
    "backup": "rsign.cli.state:backup",
    "restore": "rsign.cli.state:restore",
    "demo": "rsign.cli.dev:demo",
    "provision": "rsign.cli.provision:provision",
    "bench": "rsign.cli.dev:bench",
}


@click.group(cls=LazyGroup, lazy=SERVER_COMMANDS)
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level; errors show their details.")
@click.version_option(package_name="rsign", prog_name="rsign")
def main(verbose: bool) -> None:
    """rsign: centralized remote signing with keys kept in a PKCS#11 HSM."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


main.add_command(client)


if __name__ == "__main__":
    main()
