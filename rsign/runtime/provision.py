"""Provisioning a deployment from the province's CSV files.

Everything is read and validated before anything is written: a malformed row is reported with its
line number and nothing is imported. Applying is idempotent (users and credentials that exist are
left alone; a second run changes nothing) and resumable after an interruption, because each user
enrolment and each key generation is its own audited transaction.

Files (UTF-8, RFC 4180, agency names may contain commas):

| file                           | columns                                                            |
|--------------------------------|--------------------------------------------------------------------|
| one_stop_centres.csv           | centre_id, name, level, district                                   |
| officials.csv                  | user_id, full_name, centre_id, position                            |
| centralized_credentials.csv    | credential_id, holder_user_id, holder_name, agency, title, key_algorithm |
| health_education_officials.csv | user_id, full_name, sector, unit, district (optional, scale run)    |

One-stop officials are enrolled in their centre (the agency) and become the authorized users of
their centre's organisation seal (``SEAL-<centre_id>``, EC P-256), which signs mass results.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rsign.domain.algorithms import KeyAlgorithm
from rsign.domain.errors import AlreadyExists, InvalidRequest
from rsign.domain.files import write_private
from rsign.domain.principal import user_id_problem
from rsign.keys.service import KeyRequest
from rsign.runtime.app import App

_KEY_BATCH = 50  # credentials per HSM job and per audited transaction
CENTRE_LEVELS = ("province", "district", "commune")  # the tiers of one-stop centres


@dataclass(frozen=True)
class UserRow:
    user_id: str
    name: str
    agency: str
    source: str  # "file:line", for messages


@dataclass(frozen=True)
class CredentialRow:
    credential_id: str
    algorithm: str
    holder: str = ""
    seal_agency: str = ""
    seal_users: tuple[str, ...] = ()


@dataclass
class Plan:
    users: list[UserRow] = field(default_factory=list)
    credentials: list[CredentialRow] = field(default_factory=list)


@dataclass
class Summary:
    users_created: int = 0
    credentials_created: int = 0
    users_total: int = 0
    credentials_total: int = 0
    letters: Path | None = None


class _Reader:
    """Collects every problem of every file, so one run reports them all."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def rows(self, path: Path, columns: list[str]) -> Iterable[tuple[int, dict[str, str]]]:
        """The file's rows with their line numbers. Each line is decoded and parsed on its own, so
        a bad line (not UTF-8, an unterminated quote) is reported at its own line and the lines
        after it are still checked; the csv module, reading on, would take everything after an
        unterminated quote for one field and report the end of the file. The price: a quoted
        field cannot hold a line break, which none of these files has reason to."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.problems.append(f"{path.name}: file not found")
            return
        except OSError as exc:
            self.problems.append(f"{path.name}: cannot read ({exc.strerror or exc})")
            return
        header: list[str] | None = None
        for line, raw in enumerate(data.splitlines(), start=1):
            rec = self._record(path.name, line, raw)
            if rec is None:
                if header is None and line == 1:
                    return  # no header: nothing else in the file can be checked
                continue
            if not rec or rec == [""]:
                continue
            if header is None:
                header = [c.strip() for c in rec]
                missing = [c for c in columns if c not in header]
                if missing:
                    self.problems.append(f"{path.name}: missing column(s) {', '.join(missing)}")
                    return
                continue
            if len(rec) != len(header):
                self.problems.append(
                    f"{path.name} line {line}: {len(rec)} fields, expected {len(header)} (an unquoted comma?)"
                )
                continue
            yield line, {k: v.strip() for k, v in zip(header, rec, strict=True)}
        if header is None:
            self.problems.append(f"{path.name}: empty (no header line)")

    def _record(self, name: str, line: int, raw: bytes) -> list[str] | None:
        """One physical line as CSV fields (RFC 4180 quoting); None, with the problem noted, when
        it cannot be read."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.problems.append(
                f"{name} line {line}: not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1});"
                " save the file as UTF-8"
            )
            return None
        if line == 1:
            text = text.removeprefix("\ufeff")  # a byte-order mark from spreadsheet exports
        try:
            return next(csv.reader([text], strict=True), [])
        except csv.Error as exc:
            why = "unterminated quote" if "end of data" in str(exc) else f"bad quoting ({exc})"
            self.problems.append(f"{name} line {line}: {why}")
            return None

    def need(self, where: str, row: dict[str, str], *names: str) -> bool:
        empty = [n for n in names if not row.get(n)]
        if empty:
            self.problems.append(f"{where}: empty {', '.join(empty)}")
        return not empty


def load(data: Path, health_education: bool = False, only_centralized: bool = False) -> Plan:
    """Read and validate the deployment; raise ``InvalidRequest`` listing every problem."""
    r = _Reader()
    plan = Plan()
    seen_users: dict[str, str] = {}
    seen_creds: dict[str, str] = {}

    def add_user(uid: str, name: str, agency: str, where: str) -> None:
        if problem := user_id_problem(uid):
            r.problems.append(f"{where}: {problem}")
        elif uid in seen_users:
            r.problems.append(f"{where}: user {uid} already defined at {seen_users[uid]}")
        else:
            seen_users[uid] = where
            plan.users.append(UserRow(uid, name, agency, where))

    def add_cred(row: CredentialRow, where: str) -> None:
        if row.credential_id in seen_creds:
            r.problems.append(
                f"{where}: credential {row.credential_id} already defined at {seen_creds[row.credential_id]}"
            )
        else:
            seen_creds[row.credential_id] = where
            plan.credentials.append(row)

    centres: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    if not only_centralized:
        for line, row in r.rows(data / "one_stop_centres.csv", ["centre_id", "name", "level", "district"]):
            where = f"one_stop_centres.csv line {line}"
            if row["level"] not in CENTRE_LEVELS:
                r.problems.append(
                    f"{where}: level {row['level']!r} is not one of {', '.join(CENTRE_LEVELS)}"
                )
            if r.need(where, row, "centre_id", "name"):
                if row["centre_id"] in centres:
                    r.problems.append(f"{where}: centre {row['centre_id']} appears twice")
                centres[row["centre_id"]] = row["name"]
        for line, row in r.rows(data / "officials.csv", ["user_id", "full_name", "centre_id", "position"]):
            where = f"officials.csv line {line}"
            if not r.need(where, row, "user_id", "full_name", "centre_id"):
                continue
            if row["centre_id"] not in centres:
                r.problems.append(f"{where}: unknown centre {row['centre_id']}")
                continue
            add_user(row["user_id"], row["full_name"], centres[row["centre_id"]], where)
            members.setdefault(row["centre_id"], []).append(row["user_id"])
    cols = ["credential_id", "holder_user_id", "holder_name", "agency", "title", "key_algorithm"]
    for line, row in r.rows(data / "centralized_credentials.csv", cols):
        where = f"centralized_credentials.csv line {line}"
        if not r.need(where, row, "credential_id", "holder_user_id", "holder_name", "agency", "key_algorithm"):
            continue
        try:
            alg = KeyAlgorithm.parse(row["key_algorithm"]).value
        except InvalidRequest:
            r.problems.append(f"{where}: unknown key algorithm {row['key_algorithm']!r}")
            continue
        add_user(row["holder_user_id"], row["holder_name"], row["agency"], where)
        add_cred(CredentialRow(row["credential_id"], alg, holder=row["holder_user_id"]), where)
    for cid, users in members.items():
        add_cred(CredentialRow(f"SEAL-{cid}", "EC-P256", seal_agency=centres[cid], seal_users=tuple(users)),
                 f"one_stop_centres.csv ({cid})")  # fmt: skip
    if health_education:
        he_cols = ["user_id", "full_name", "sector", "unit", "district"]
        for line, row in r.rows(data / "health_education_officials.csv", he_cols):
            where = f"health_education_officials.csv line {line}"
            if not r.need(where, row, "user_id", "full_name", "unit"):
                continue
            add_user(row["user_id"], row["full_name"], row["unit"], where)
            add_cred(CredentialRow(f"SL-HE-{row['user_id']}", "EC-P256", holder=row["user_id"]), where)
    if len(r.problems) == 1:
        raise InvalidRequest(f"{r.problems[0]}; nothing was imported")
    if r.problems:
        more = f" (and {len(r.problems) - 50} more)" if len(r.problems) > 50 else ""
        raise InvalidRequest("the deployment files have problems; nothing was imported:\n  "
                             + "\n  ".join(r.problems[:50]) + more)  # fmt: skip
    return plan


Enrolled = Callable[[str, str, bytes], None]  # user_id, initial PIN, TOTP seed


def apply(
    app: App,
    plan: Plan,
    progress: Callable[[str, int, int], None] | None = None,
    on_enrolled: Enrolled | None = None,
    letters_dir: Path | None = None,
) -> Summary:
    """Enrol missing users, then generate missing credentials. Idempotent."""
    summary = Summary(users_total=len(plan.users), credentials_total=len(plan.credentials))
    with app.store.read() as t:
        existing_users = t.user_ids()
        existing_creds = t.credential_ids()
    new_users = [u for u in plan.users if u.user_id not in existing_users]
    new_creds = [c for c in plan.credentials if c.credential_id not in existing_creds]
    workers = max(2, (os.cpu_count() or 1) * 2)

    letters = None
    if new_users:
        folder = letters_dir or app.settings.state_dir / "enrolment"
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        summary.letters = folder / f"letters-{int(app.clock.now())}.jsonl"
        write_private(summary.letters, "")
        letters = open(summary.letters, "a", encoding="utf-8")

    done = 0

    def enrol(u: UserRow) -> None:
        # An initial PIN the official changes on first use; it and the authenticator seed reach
        # them on a sealed enrolment letter (the letters file is 0600; destroy it once printed).
        pin = f"{secrets.randbelow(10**8):08d}"
        try:
            enr = app.auth.enrol(u.user_id, u.name, pin, agency=u.agency)
        except AlreadyExists:
            return
        if letters is not None:
            letters.write(json.dumps({"user_id": u.user_id, "name": u.name, "agency": u.agency,
                                      "initial_pin": pin, "otpauth_uri": enr.otpauth_uri},
                                     ensure_ascii=False) + "\n")  # fmt: skip
        if on_enrolled is not None:
            on_enrolled(u.user_id, pin, enr.seed)

    try:
        with ThreadPoolExecutor(workers) as ex:  # Argon2 releases the GIL
            for _ in ex.map(enrol, new_users):
                done += 1
                summary.users_created += 1
                if progress:
                    progress("users", done, len(new_users))
    finally:
        if letters is not None:
            letters.close()

    def generate(batch: list[CredentialRow]) -> int:
        reqs = [KeyRequest(c.credential_id, c.algorithm, c.holder, None, c.seal_agency, c.seal_users) for c in batch]
        try:
            return len(app.keys.generate_many(reqs))
        except AlreadyExists:  # another run got there first: fall back to one by one
            made = 0
            for r in reqs:
                try:
                    app.keys.generate_many([r])
                    made += 1
                except AlreadyExists:
                    pass
            return made

    done = 0
    batches = [new_creds[i : i + _KEY_BATCH] for i in range(0, len(new_creds), _KEY_BATCH)]
    hsm_workers = max(1, int(getattr(app.hsm, "size", 1)))
    with ThreadPoolExecutor(hsm_workers) as ex:  # one batch per HSM worker at a time
        for made, batch in zip(ex.map(generate, batches), batches, strict=True):
            done += len(batch)
            summary.credentials_created += made
            if progress:
                progress("credentials", done, len(new_creds))
    return summary
