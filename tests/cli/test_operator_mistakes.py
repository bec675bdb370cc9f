"""An operator's mistakes: each is one line on stderr and a non-zero exit, never a traceback, and
nothing is created or left behind (the directory listing is the same before and after)."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from rsign.dev.softhsm import find_softhsm_module
from rsign.domain.principal import user_id_problem
from tests.cli.operator import assert_one_line_error, listing, rsign

READ_COMMANDS = [
    ("audit", "verify"),
    ("audit", "tail"),
    ("audit", "search", "--user", "x"),
    ("audit", "export", "--out", "export.jsonl"),
    ("audit", "certificate"),
    ("users", "search", "--agency", "x"),
    ("keys", "search"),
    ("keys", "history", "C-1"),
    ("keys", "expiring"),
    ("users", "suspend", "someone"),
]


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised state directory (`rsign init`), copied by the tests that spoil it."""
    sd = tmp_path_factory.mktemp("initialised") / "state"
    out = rsign("init", "--state-dir", str(sd))
    assert out.returncode == 0 and "ready" in out.stdout, out.stderr
    return sd


@pytest.fixture
def spoilable(initialised: Path, tmp_path: Path) -> Iterator[Path]:
    sd = tmp_path / "copy"
    shutil.copytree(initialised, sd)
    yield sd


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_read_commands_refuse_a_folder_that_is_not_a_state_directory(tmp_path: Path, command: tuple[str, ...]) -> None:
    # The auditor in the wrong folder: no "audit log intact: 0 records", no ./.rsign made.
    (tmp_path / "notes.txt").write_text("not rsign", encoding="utf-8")
    before = listing(tmp_path)
    out = rsign(*command, cwd=tmp_path)
    assert_one_line_error(out, f"no rsign state directory at {tmp_path / '.rsign'}", "--state-dir")
    # An existing folder that is not a state directory is named too, and left as it is.
    out = rsign(*command, "--state-dir", str(tmp_path), cwd=tmp_path)
    assert_one_line_error(out, f"{tmp_path} is not an initialised rsign state directory")
    assert listing(tmp_path) == before


def test_listen_nonsense_and_port_in_use(tmp_path: Path) -> None:
    sd = tmp_path / "new-state"
    out = rsign("serve", "--listen", "nonsense", "--state-dir", str(sd))
    assert_one_line_error(out, "listen address must be HOST:PORT", "'nonsense'")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = rsign("serve", "--listen", f"127.0.0.1:{port}", "--state-dir", str(sd))
    assert_one_line_error(out, f"port {port} is already in use")
    assert listing(tmp_path) == []


def test_bad_configuration_values_and_toml_syntax(tmp_path: Path, spoilable: Path) -> None:
    sd = tmp_path / "configured"
    sd.mkdir()
    toml = sd / "rsign.toml"
    cases = [
        ('[service]\nsad_ttl_seconds = "five"\n', ("service.sad_ttl_seconds = 'five'", "expected a number of seconds")),
        ("[service]\nhsm_workers = 2.5\n", ("service.hsm_workers = 2.5", "expected a whole number")),
        ("[service]\nlisten = 50051\n", ("service.listen = 50051", "expected a string")),
        ("[service]\nsad_ttl = 300\n", ("unknown setting service.sad_ttl",)),
        ("[service\nsad_ttl_seconds = 5\n", ("is not valid TOML", "at line 1")),
        ("[service]\nsad_ttl_seconds = 5\nsad_ttl_seconds = 6\n", ("is not valid TOML", "line 3")),
    ]
    for text, expected in cases:
        toml.write_text(text, encoding="utf-8")
        before = listing(tmp_path)
        # A first start with the mistake creates nothing; so does a command on a live deployment.
        assert_one_line_error(rsign("serve", "--state-dir", str(sd)), str(toml), *expected[1:])
        assert listing(tmp_path) == before
        (spoilable / "rsign.toml").write_text(text, encoding="utf-8")
        live = listing(spoilable)
        assert_one_line_error(rsign("audit", "verify", "--state-dir", str(spoilable)), *expected)
        assert listing(spoilable) == live


def test_a_database_that_cannot_be_opened(tmp_path: Path, spoilable: Path) -> None:
    # A URL whose folder does not exist, on a first start: the token made for it is removed again.
    fresh = tmp_path / "fresh"
    url = f"sqlite:///{tmp_path}/no/such/folder/rsign.db"
    out = rsign("init", "--state-dir", str(fresh), env={"RSIGN_DATABASE_URL": url})
    assert_one_line_error(out, f"cannot open the database {url}", "unable to open database file")
    assert not fresh.exists()
    # A database file that is not one, in a deployment: named, and left as it is for the operator.
    (spoilable / "rsign.db").write_bytes(b"this is not a database\n" * 100)
    before = listing(spoilable)
    out = rsign("audit", "verify", "--state-dir", str(spoilable))
    assert_one_line_error(out, f"cannot open the database sqlite:///{spoilable}/rsign.db", "file is not a database")
    assert listing(spoilable) == before
    # -v shows the details: the driver's exception and where it came from.
    out = rsign("-v", "audit", "verify", "--state-dir", str(spoilable))
    assert out.returncode == 2 and "DatabaseError" in out.stderr and "Traceback" in out.stderr


def test_wrong_pkcs11_module(tmp_path: Path) -> None:
    sd = tmp_path / "hsm-state"
    pin = {"RSIGN_HSM_PIN": "12345678"}
    missing = tmp_path / "libvendor-pkcs11.so"
    out = rsign("serve", "--state-dir", str(sd), env={"RSIGN_PKCS11_MODULE": str(missing), **pin})
    assert_one_line_error(out, f"the PKCS#11 module {missing} (RSIGN_PKCS11_MODULE) does not exist")
    assert listing(tmp_path) == []
    # A file that is not a PKCS#11 module: the loader's own reason is shown, and no rsign.db is
    # left behind (the HSM is opened before the database is created).
    bogus = tmp_path / "not-a-module.so"
    bogus.write_text("not a shared library\n" * 200, encoding="utf-8")
    out = rsign("init", "--state-dir", str(sd), env={"RSIGN_PKCS11_MODULE": str(bogus), **pin})
    assert_one_line_error(out, "cannot open the HSM token 'rsign'", str(bogus), "invalid ELF header")
    assert listing(tmp_path) == ["not-a-module.so"]
    # The right module but a token label it does not have: still one line, nothing left.
    module = find_softhsm_module()
    out = rsign(
        "init", "--state-dir", str(sd), env={"RSIGN_PKCS11_MODULE": module, "RSIGN_TOKEN_LABEL": "no-such", **pin}
    )
    assert_one_line_error(out, "cannot open the HSM token 'no-such'")
    assert listing(tmp_path) == ["not-a-module.so"]


def test_a_bad_user_id_is_refused_by_users_add_as_by_provisioning(tmp_path: Path) -> None:
    sd = tmp_path / "state"
    out = rsign("users", "add", "Bad User", "--name", "X", "--pin-stdin", "--state-dir", str(sd), stdin="73915428\n")
    rule = user_id_problem("Bad User")
    assert rule is not None
    assert_one_line_error(out, rule)
    assert listing(tmp_path) == []
    # A first enrolment refused after the state directory was made (a PIN too short) undoes it.
    out = rsign("users", "add", "lo.van.tuan", "--name", "X", "--pin-stdin", "--state-dir", str(sd), stdin="123\n")
    assert_one_line_error(out, "the PIN must have at least 6 characters")
    assert listing(tmp_path) == []
    data = tmp_path / "data"
    data.mkdir()
    (data / "centralized_credentials.csv").write_text(
        "credential_id,holder_user_id,holder_name,agency,title,key_algorithm\n"
        "C-1,Bad User,Lò Văn Tuấn,Sở Nội vụ,Chuyên viên,EC-P256\n",
        encoding="utf-8",
    )
    for name, header in (("one_stop_centres.csv", "centre_id,name,level,district"),
                         ("officials.csv", "user_id,full_name,centre_id,position")):  # fmt: skip
        (data / name).write_text(header + "\n", encoding="utf-8")
    before = listing(tmp_path)
    out = rsign("provision", "--data", str(data), "--state-dir", str(sd))
    assert_one_line_error(out, f"centralized_credentials.csv line 2: {rule}", "nothing was imported")
    assert listing(tmp_path) == before


def test_a_csv_file_that_is_not_utf8(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "one_stop_centres.csv").write_text("centre_id,name,level,district\n", encoding="utf-8")
    (data / "officials.csv").write_text("user_id,full_name,centre_id,position\n", encoding="utf-8")
    (data / "centralized_credentials.csv").write_bytes(
        "credential_id,holder_user_id,holder_name,agency,title,key_algorithm\n"
        "C-1,lo.van.tuan,Lo Van Tuan,So Noi vu,Chuyen vien,EC-P256\n"
        "C-2,ha.thi.lan,Hà Thị Lan,Sở Y tế,Chuyên viên,EC-P256\n".encode("cp1258", errors="replace")
    )
    before = listing(tmp_path)
    out = rsign("provision", "--data", str(data), "--state-dir", str(tmp_path / "state"))
    assert_one_line_error(out, "centralized_credentials.csv line 3: not UTF-8", "save the file as UTF-8")
    assert listing(tmp_path) == before


def test_backup_and_restore_mistakes(tmp_path: Path, spoilable: Path) -> None:
    before = listing(tmp_path)
    # PostgreSQL is backed up with its own tools: said in one line, nothing written.
    pg = {"RSIGN_DATABASE_URL": "postgresql+psycopg://rsign@db.invalid/rsign"}
    out = rsign("backup", str(tmp_path / "b1"), "--state-dir", str(spoilable), env=pg)
    assert_one_line_error(out, "rsign backup copies a SQLite database", "pg_dump")
    # Restoring something that is not a backup, or over an existing state directory.
    (tmp_path / "photos").mkdir()
    out = rsign("restore", str(tmp_path / "photos"), "--state-dir", str(tmp_path / "new"))
    assert_one_line_error(out, f"not a backup: {tmp_path / 'photos'} is not an initialised rsign state directory")
    out = rsign("restore", str(spoilable), "--state-dir", str(spoilable))
    assert_one_line_error(out, f"state directory {spoilable} already exists and is not empty")
    assert listing(tmp_path) == sorted([*before, "photos"])
