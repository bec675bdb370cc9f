"""The Son La demo deployment: provisioning from the CSV files, and the demo holders' secrets.

DEVELOPMENT ONLY: to let a person try signing without an authenticator app, the demo keeps each
holder's PIN and TOTP seed in ``<state-dir>/demo-secrets.json`` (mode 0600). A real deployment
never stores either in clear.
"""

from __future__ import annotations

import base64
import csv
import fcntl
import json
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsign.app import App
from rsign.errors import AlreadyExists, InvalidRequest
from rsign.hsm.softhsm import write_private

SECRETS_FILE = "demo-secrets.json"


@dataclass(frozen=True)
class CredentialRow:
    line: int
    credential_id: str
    holder_user_id: str
    holder_name: str
    agency: str
    title: str
    key_algorithm: str


def read_credentials(path: Path) -> list[CredentialRow]:
    """Parse centralized_credentials.csv (RFC 4180, UTF-8); every bad row is reported by line."""
    rows: list[CredentialRow] = []
    problems: list[str] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        need = ["credential_id", "holder_user_id", "holder_name", "agency", "title", "key_algorithm"]
        missing = [c for c in need if c not in (reader.fieldnames or [])]
        if missing:
            raise InvalidRequest(f"{path}: missing columns {', '.join(missing)}")
        for rec in reader:
            line = reader.line_num
            vals = {k: (rec.get(k) or "").strip() for k in need}
            if None in rec or any(
                not vals[k] for k in ("credential_id", "holder_user_id", "holder_name", "key_algorithm")
            ):
                problems.append(f"line {line}: malformed row")
                continue
            rows.append(CredentialRow(line, **vals))
    if problems:
        raise InvalidRequest(f"{path}: " + "; ".join(problems[:20]))
    return rows


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


def provision(app: App, csv_path: Path, progress: Callable[[int, int], None] | None = None) -> int:
    """Enrol every holder and generate every credential that does not exist yet. Idempotent.

    Returns how many credentials were created in this run.
    """
    rows = read_credentials(csv_path)
    store = DemoSecrets(app.settings.state_dir)
    with app.store.read() as t:
        todo = [r for r in rows if t.get_credential(r.credential_id) is None]
    done = len(rows) - len(todo)
    if progress:
        progress(done, len(rows))

    def one(r: CredentialRow) -> None:
        with app.store.read() as t:
            exists = t.get_user(r.holder_user_id) is not None
        if not exists:
            pin = f"{secrets.randbelow(10**6):06d}"
            try:
                enr = app.auth.enrol(r.holder_user_id, r.holder_name, pin, agency=r.agency)
            except AlreadyExists:
                pass  # the same holder on two rows, enrolled by the other thread
            else:
                seed_b32 = base64.b32encode(enr.seed).decode("ascii")

                def put(d: dict[str, Any]) -> None:
                    d["users"][r.holder_user_id] = {"pin": pin, "seed_b32": seed_b32, "name": r.holder_name}

                store.update(put)
        app.keys.generate(r.credential_id, r.key_algorithm, r.holder_user_id)

        def put_cred(d: dict[str, Any]) -> None:
            d["credentials"][r.credential_id] = r.holder_user_id

        store.update(put_cred)

    created = 0
    # Key generation runs inside the HSM worker processes; one caller thread per worker keeps
    # them all busy (RSA-2048 generation is ~0.1-0.5 s per key on SoftHSMv2).
    workers = max(1, getattr(app.hsm, "size", 1))
    with ThreadPoolExecutor(max_workers=workers) as ex:
        for _ in ex.map(one, todo):
            created += 1
            done += 1
            if progress:
                progress(done, len(rows))
    return created
