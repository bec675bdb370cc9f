"""The CLI drives a running server's AdminService (--server --as, interactive PIN and code)."""

from __future__ import annotations

import subprocess
import sys

from rsign.domain.events import EventFilter
from tests.conftest import Env, make_signer


def run_cli(env: Env, login: tuple[str, str, str], *args: str) -> subprocess.CompletedProcess[str]:
    user, pin, otp = login
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "rsign.cli",
            args[0],
            "--server",
            env.server.address,
            "--as",
            user,
            *args[1:],
            "--state-dir",
            str(env.state_dir),
        ],
        input=f"{pin}\n{otp}\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_agency_admin_through_the_server(env: Env) -> None:
    admin = make_signer(env, "aa.cli", agency="UBND huyện Mộc Châu", role="agency_admin")
    user = make_signer(env, "cli.user", agency="UBND huyện Mộc Châu")
    out = run_cli(env, (admin.user_id, admin.pin, admin.code()), "users", "search", "--name", "lo van tuan")
    assert out.returncode == 0, out.stderr
    assert user.user_id in out.stdout and "UBND huyện Mộc Châu" in out.stdout
    out = run_cli(env, (admin.user_id, admin.pin, admin.code()), "users", "suspend", user.user_id, "--reason", "leave")
    assert out.returncode == 0 and "suspended" in out.stdout, out.stderr
    # Outside their agency: the server says no, and the CLI says why.
    other = make_signer(env, "cli.other", agency="UBND huyện Yên Châu")
    out = run_cli(env, (admin.user_id, admin.pin, admin.code()), "users", "suspend", other.user_id)
    assert out.returncode == 2 and "PERMISSION_DENIED" in out.stderr
    # A wrong code: login refused, nothing done.
    out = run_cli(env, (admin.user_id, admin.pin, "000000"), "users", "reactivate", user.user_id)
    assert out.returncode == 2 and "UNAUTHENTICATED" in out.stderr


def test_server_options_after_the_subcommand(env: Env) -> None:
    """`rsign users suspend U --server H --as A`, as a person types it, acts on the server too."""
    admin = make_signer(env, "aa.after", agency="UBND huyện Mai Sơn", role="agency_admin")
    user = make_signer(env, "cli.after", agency="UBND huyện Mai Sơn")
    login = f"{admin.pin}\n{admin.code()}\n"
    args = ["users", "suspend", user.user_id, "--reason", "leave", "--server", env.server.address, "--as"]
    out = subprocess.run(
        [sys.executable, "-m", "rsign.cli", *args, admin.user_id, "--state-dir", str(env.state_dir)],
        input=login,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "suspended" in out.stdout, out.stderr
    with env.app.store.read() as t:
        view = t.get_user(user.user_id)
    assert view is not None and view.status == "suspended"
    # The record names the admin who logged in through the server, not the local operator.
    rec = env.app.audit.tail(EventFilter(action="user.suspend"), 1)[0]
    assert rec["actor"] == admin.user_id and rec["result"] == "success"
    # --server without --as, after the subcommand: refused in one line, nothing done.
    out = subprocess.run(
        [sys.executable, "-m", "rsign.cli", "keys", "search", "--server", env.server.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and out.stderr.strip().startswith("error: --server needs --as USER_ID")
    assert len(out.stderr.strip().splitlines()) == 1
