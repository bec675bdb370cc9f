"""The Son La demo deployment: provisioning from the CSV files, and the demo holders' secrets.

DEVELOPMENT ONLY: to let a person try signing without an authenticator app, the demo keeps each
holder's PIN and TOTP seed in ``<state-dir>/demo-secrets.json`` (mode 0600). A real deployment
never stores either in clear.
"""

from __future__ import annotations

import base64
import fcntl
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rsign.domain.files import write_private
from rsign.runtime.app import App
from rsign.runtime.provision import apply, load

SECRETS_FILE = "demo-secrets.json"


class DemoSecrets:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SECRETS_FILE

    def load(self) -> dict[str, Any]:
        if not self.path.exists():
            return {"users": {}, "credentials": {}}
        data: dict[str, Any] = json.loads(self.path.read_text(encoding="utf-8"))
        return data

    def update(self, fn: Callable[[dict[str, Any]], None]) -> None:
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.load()
            fn(data)
            write_private(self.path, json.dumps(data, ensure_ascii=False, indent=1))

    def seed(self, user_id: str) -> bytes:
        return base64.b32decode(self.load()["users"][user_id]["seed_b32"])


def provision(app: App, data: Path, progress: Callable[[int, int], None] | None = None) -> int:
    """Enrol the 176 centralized credentials' holders and generate the credentials (idempotent),
    keeping each new holder's PIN and TOTP seed in the demo secrets file. Returns how many
    credentials were created."""
    plan = load(data, only_centralized=True)
    store = DemoSecrets(app.settings.state_dir)
    names = {u.user_id: u.name for u in plan.users}

    def remember(user_id: str, pin: str, seed: bytes) -> None:
        seed_b32 = base64.b32encode(seed).decode("ascii")

        def put(d: dict[str, Any]) -> None:
            d["users"][user_id] = {"pin": pin, "seed_b32": seed_b32, "name": names.get(user_id, "")}

        store.update(put)

    def put_creds(d: dict[str, Any]) -> None:
        d["credentials"].update({c.credential_id: c.holder for c in plan.credentials})

    store.update(put_creds)
    total = len(plan.credentials)

    def report(stage: str, done: int, n: int) -> None:
        if progress and stage == "credentials":
            progress(total - n + done, total)

    summary = apply(app, plan, report, on_enrolled=remember, letters_dir=app.settings.state_dir / "demo-letters")
    if progress:
        progress(total, total)
    return summary.credentials_created
