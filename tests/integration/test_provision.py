"""CSV provisioning: RFC 4180 quoting, Vietnamese diacritics, line-numbered errors with nothing
imported, idempotence, and the one-stop centres' organisation seals."""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from rsign.dev import EMBEDDED
from rsign.domain import context
from rsign.domain.errors import InvalidRequest
from rsign.runtime.app import App, build_app
from rsign.runtime.config import load_settings
from rsign.runtime.provision import apply, load

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "son-la"


def subset(dst: Path, centres: int = 3, credentials: int = 4, officials_per_centre: int = 4) -> None:
    """A small but real slice of the Son La files, keeping quoted agency names with commas. A few
    officials per centre (each is an Argon2 PIN hash; the whole centre's staff only made it slow)."""
    dst.mkdir()
    rows = list(csv.reader(open(EXAMPLES / "one_stop_centres.csv", encoding="utf-8")))
    keep = rows[: centres + 1]
    ids = {r[0] for r in keep[1:]}
    _write(dst / "one_stop_centres.csv", keep)
    off = list(csv.reader(open(EXAMPLES / "officials.csv", encoding="utf-8")))
    staff = [[r for r in off[1:] if r[2] == centre][:officials_per_centre] for centre in sorted(ids)]
    _write(dst / "officials.csv", [off[0], *(r for group in staff for r in group)])
    cred = list(csv.reader(open(EXAMPLES / "centralized_credentials.csv", encoding="utf-8")))
    with_comma = [r for r in cred[1:] if "," in r[3]][:2]
    ec = [r for r in cred[1:] if r[5] == "EC-P256"][:1]
    rsa = [r for r in cred[1:] if r[5] == "RSA-2048" and "," not in r[3]][: credentials - 3]
    _write(dst / "centralized_credentials.csv", [cred[0], *with_comma, *ec, *rsa])


def _write(path: Path, rows: list[list[str]]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    a = build_app(load_settings(tmp_path / "state", embedded=EMBEDDED), pool=False)
    with context.request(client="test", actor="provisioner"):
        yield a
    a.close()


def test_provision_is_idempotent_and_keeps_diacritics_and_commas(app: App, tmp_path: Path) -> None:
    data = tmp_path / "data"
    subset(data)
    plan = load(data)
    first = apply(app, plan)
    assert first.users_created == len(plan.users) and first.credentials_created == len(plan.credentials)
    assert first.letters is not None and (first.letters.stat().st_mode & 0o777) == 0o600
    second = apply(app, load(data))
    assert second.users_created == 0 and second.credentials_created == 0
    with app.store.read() as t:
        creds = {c.credential_id: c for c in t.search_credentials(limit=1000)}
        comma = [c for c in creds.values() if "," in c.agency]
        assert comma, "an agency name with a comma survived the round trip"
        holder = t.get_user(comma[0].holder_user_id)
        assert holder is not None and any(
            ch in holder.name for ch in "àáảãạăắằẳẵặâấầẩẫậđèéẻẽẹêếềểễệìíỉĩịòóỏõọôốồổỗộơớờởỡợùúủũụưứừửữựỳýỷỹỵ"
        )
        seals = [c for c in creds.values() if c.kind == "seal"]
        assert len(seals) == 3
        for s in seals:
            assert t.seal_users(s.credential_id), "each centre's officials may activate its seal"


@pytest.mark.parametrize(
    ("file", "edit", "expected"),
    [
        (
            "centralized_credentials.csv",
            lambda text: text.replace('"Sở Văn hóa, Thể thao và Du lịch"', "Sở Văn hóa, Thể thao và Du lịch", 1),
            "fields, expected 6",
        ),
        ("officials.csv", lambda text: text.replace("TTPVHCC-SL", "NO-SUCH-CENTRE", 1), "unknown centre"),
        ("centralized_credentials.csv", lambda text: text.replace("RSA-2048", "DSA-1024", 1), "unknown key algorithm"),
        ("officials.csv", lambda text: text + text.splitlines()[1] + "\n", "already defined"),
        ("one_stop_centres.csv", lambda text: text.replace("centre_id,", "centre,", 1), "missing column"),
    ],
)
def test_malformed_rows_are_reported_by_line_and_nothing_is_imported(
    app: App, tmp_path: Path, file: str, edit: object, expected: str
) -> None:
    data = tmp_path / "data"
    subset(data)
    path = data / file
    path.write_text(edit(path.read_text(encoding="utf-8")), encoding="utf-8")  # type: ignore[operator]
    with pytest.raises(InvalidRequest) as e:
        apply(app, load(data))
    assert expected in e.value.message and (file in e.value.message)
    if "missing column" not in expected:
        assert " line " in e.value.message
    with app.store.read() as t:
        assert t.user_ids() == set() and t.credential_ids() == set()


def test_full_son_la_plan_validates(tmp_path: Path) -> None:
    """The real files (235 centres, 962 officials, 176 credentials, 25,065 future officials)."""
    shutil.copytree(EXAMPLES, tmp_path / "d")
    plan = load(tmp_path / "d", health_education=True)
    assert len(plan.users) == 962 + 176 + 25_065
    persons = [c for c in plan.credentials if c.holder]
    seals = [c for c in plan.credentials if c.seal_agency]
    assert len(persons) == 176 + 25_065 and len(seals) == len({c.seal_agency for c in seals}) > 200


def test_every_bad_row_is_reported_at_its_own_line(tmp_path: Path) -> None:
    """An unterminated quote is reported at the line where it opens, and the rows after it are
    still checked (the csv module alone would swallow the rest of the file and report its end);
    a centre's level is checked; a line that is not UTF-8 is named."""
    data = tmp_path / "data"
    subset(data)
    centres = (data / "one_stop_centres.csv").read_text(encoding="utf-8").splitlines()
    centres[1] = centres[1].replace(",province,", ",provinc,")  # line 2
    centres.append('BPMC-X,"Bộ phận Một cửa, unterminated,district,')  # line 5
    centres.append("BPMC-Y,Bộ phận Một cửa Y,village,")  # line 6
    (data / "one_stop_centres.csv").write_text("\n".join(centres) + "\n", encoding="utf-8")
    creds = (data / "centralized_credentials.csv").read_bytes().splitlines()
    creds.insert(2, "C-9,ha.thi.lan,Hà Thị Lan,Sở Y tế,Chuyên viên,EC-P256".encode("cp1258", errors="replace"))
    creds.append(b"C-10,Bad User,X,Agency,Title,EC-P256")
    (data / "centralized_credentials.csv").write_bytes(b"\n".join(creds) + b"\n")
    with pytest.raises(InvalidRequest) as e:
        load(data)
    problems = e.value.message.splitlines()[1:]
    assert [p.strip() for p in problems] == [
        "one_stop_centres.csv line 2: level 'provinc' is not one of province, district, commune",
        "one_stop_centres.csv line 5: unterminated quote",
        "one_stop_centres.csv line 6: level 'village' is not one of province, district, commune",
        "centralized_credentials.csv line 3: not UTF-8 (byte 0xe0 at column 17); save the file as UTF-8",
        f"centralized_credentials.csv line {len(creds)}: user id 'Bad User' is not lower-case letters, digits,"
        " '.', '_' or '-' (starting with a letter or digit, at most 128 characters)",
    ]
