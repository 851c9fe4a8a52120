"""Storage faults: a torn journal line, passwords with URL-special characters, racing `storage up`, long names."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import quote, quote_plus

import optuna
import pytest
from optuna.storages.journal import JournalFileSymlinkLock
from typer.testing import CliRunner

from conftest import reachable_tmpdir
from enstune.cli import app
from enstune.errors import EnstuneError

ENSTUNE = str(Path(sys.executable).parent / "enstune")
# What an interrupted append leaves: the start of a JSON log line and no newline.
TORN = b'{"op_code":0,"worker_id":"dead-worker","study_name":"half-writ'
ONE_POINT = ["--set", "members=2", "--set", "finetune.epochs=2", "--set", "space.lr_mult.choices=[4]",
             "--set", "space.epoch_mult.choices=[2]", "--set", 'evaluate=["calibration"]']


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def backups(home: Path) -> list[Path]:
    return sorted(home.glob("studies.journal.torn-*"))


# --- 1. a torn last line in the embedded journal -------------------------------------------------------------


def test_a_torn_last_line_is_set_aside_once_and_every_study_survives(home):
    assert invoke("study", "create", "sse-demo", "--name", "before", *ONE_POINT).exit_code == 0
    journal = home / "studies.journal"
    intact = journal.read_bytes()
    with journal.open("ab") as f:  # the process writing the next line died half-way
        f.write(TORN)

    created = invoke("study", "create", "sse-demo", "--name", "after", *ONE_POINT)
    assert created.exit_code == 0, created.output
    (backup,) = backups(home)
    assert backup.read_bytes() == TORN
    notice = created.stderr.strip().splitlines()
    assert len(notice) == 1 and backup.name in notice[0], created.stderr
    assert journal.read_bytes().startswith(intact)  # nothing before the torn line is dropped

    ran = invoke("study", "run", "after")
    assert ran.exit_code == 0, ran.output
    assert "unfinished line" not in ran.stderr  # repaired once, not again
    shown = json.loads(invoke("study", "show", "after", "--json").stdout)
    assert [t["state"] for t in shown["trials"]] == ["COMPLETE"]
    before = json.loads(invoke("study", "show", "before", "--json").stdout)
    assert [t["state"] for t in before["trials"]] == ["WAITING"]
    assert sorted(r["name"] for r in json.loads(invoke("study", "list", "--json").stdout)) == ["after", "before"]
    assert backups(home) == [backup]


def test_a_line_torn_while_a_worker_holds_the_journal_is_set_aside_before_its_next_write(home, capsys):
    from enstune.storage import open_storage

    storage = open_storage()  # a worker that opened the journal before another one died
    study = optuna.create_study(study_name="held", storage=storage)
    with (home / "studies.journal").open("ab") as f:
        f.write(TORN)
    study.set_user_attr("still", "writable")
    trial = study.ask()
    study.tell(trial, 1.0)

    (backup,) = backups(home)
    assert backup.read_bytes() == TORN and backup.name in capsys.readouterr().err
    fresh = optuna.load_study(study_name="held", storage=open_storage())
    assert fresh.user_attrs == {"still": "writable"} and [t.value for t in fresh.trials] == [1.0]


def test_the_repair_takes_the_lock_optunas_writers_take(home):
    from enstune.storage import open_storage

    optuna.create_study(study_name="first", storage=open_storage())
    journal = home / "studies.journal"
    line = json.dumps({"op_code": 0, "worker_id": "w", "study_name": "second", "directions": [1]}).encode() + b"\n"
    lock = JournalFileSymlinkLock(str(journal))
    lock.acquire()  # a writer is half-way through its line: not torn, only unfinished
    with journal.open("ab") as f:
        f.write(line[:20])
    opened: list = []
    opener = threading.Thread(target=lambda: opened.append(open_storage()))
    opener.start()
    time.sleep(1.0)
    assert opener.is_alive(), "the journal was opened without waiting for its lock"
    with journal.open("ab") as f:
        f.write(line[20:])
    lock.release()
    opener.join(timeout=30)
    assert not backups(home)
    assert optuna.get_all_study_names(opened[0]) == ["first", "second"]


@pytest.mark.parametrize("tail", [TORN, b"\0" * 4096], ids=["json", "zeros"])
def test_reading_a_torn_journal_keeps_its_studies(home, capsys, tail):
    from enstune.storage import open_storage

    optuna.create_study(study_name="kept", storage=open_storage())
    with (home / "studies.journal").open("ab") as f:
        f.write(tail)  # zeros: what a file system may show of a write cut by a power loss
    assert optuna.get_all_study_names(open_storage()) == ["kept"]
    assert optuna.get_all_study_names(open_storage()) == ["kept"]
    (backup,) = backups(home)
    assert backup.read_bytes() == tail and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_file_that_is_not_a_journal_is_left_as_it_is(home):
    from enstune.storage import open_storage

    home.mkdir(parents=True, exist_ok=True)
    journal = home / "studies.journal"
    journal.write_bytes(b"name,score\nalice,1\nbob")
    with pytest.raises(EnstuneError, match="is not an Optuna journal"):
        open_storage()
    assert journal.read_bytes() == b"name,score\nalice,1\nbob" and not backups(home)


def test_a_whole_line_that_is_no_record_is_set_aside_with_one_notice_and_nothing_else_dropped(home, capsys):
    from enstune.storage import open_storage

    study = optuna.create_study(study_name="kept", storage=open_storage())
    study.set_user_attr("a", 1)
    journal = home / "studies.journal"
    stray = b"this line is no record\n"
    with journal.open("ab") as f:  # a whole line: Optuna's reader fails every study on it
        f.write(stray)
    size = journal.stat().st_size
    optuna.create_study(study_name="later", storage=open_storage()).set_user_attr("b", 2)
    assert json.loads(invoke("study", "list", "--json").stdout) is not None
    storage = open_storage()
    assert sorted(optuna.get_all_study_names(storage)) == ["kept", "later"]
    assert optuna.load_study(study_name="kept", storage=storage).user_attrs == {"a": 1}
    assert optuna.load_study(study_name="later", storage=storage).user_attrs == {"b": 2}
    (backup,) = backups(home)
    assert backup.read_bytes() == stray
    notices = [line for line in capsys.readouterr().err.splitlines() if "no journal records" in line]
    assert len(notices) == 1 and backup.name in notices[0]
    # repaired in place, at the same length: plain Optuna reads it again, and no byte moved
    plain = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    assert sorted(optuna.get_all_study_names(plain)) == ["kept", "later"]
    repaired = journal.read_bytes()[size - len(stray):size]
    assert len(repaired) == len(stray) and json.loads(repaired) == {"op_code": 10}


def test_a_tail_that_is_not_json_is_set_aside_and_the_next_create_works(home):
    assert invoke("study", "create", "sse-demo", "--name", "before", *ONE_POINT).exit_code == 0
    journal = home / "studies.journal"
    with journal.open("ab") as f:
        f.write(b"garbage without a newline")
    created = invoke("study", "create", "sse-demo", "--name", "after", *ONE_POINT)
    assert created.exit_code == 0, created.output
    (backup,) = backups(home)
    assert backup.read_bytes() == b"garbage without a newline"
    names = sorted(r["name"] for r in json.loads(invoke("study", "list", "--json").stdout))
    assert names == ["after", "before"]


@pytest.fixture
def small_disk(tmp_path):
    """A file system of 1 MiB (a tmpfs), where this process may mount one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a small file system needs privileges")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_naming_it_leaves_nothing_torn_and_the_write_goes_through_when_space_returns(
        small_disk, monkeypatch, caplog):
    from enstune.storage import journal as module
    from enstune.storage import open_storage

    monkeypatch.setenv("ENSTUNE_HOME", str(small_disk))
    storage = open_storage()
    study = optuna.create_study(study_name="full", storage=storage)
    filler = small_disk / "filler"
    with filler.open("wb", buffering=0) as f:  # the rest of the disk, taken by something else
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
    journal = small_disk / "studies.journal"
    before = journal.read_bytes()
    monkeypatch.setattr(module, "PATIENCE", 2.0)
    with pytest.raises(EnstuneError) as failed:
        study.set_user_attr("big", "x" * 65536)
    assert str(failed.value).startswith(f"cannot write the journal {journal}: No space left on device")
    assert str(small_disk) in str(failed.value) and len(str(failed.value).splitlines()) == 1
    assert journal.read_bytes() == before and not backups(small_disk), "nothing torn, no backup per attempt"
    # space returns while a write waits: it goes through
    monkeypatch.setattr(module, "PATIENCE", 60.0)
    caplog.clear()
    threading.Timer(2.0, filler.unlink).start()
    study.set_user_attr("big", "x" * 65536)
    assert optuna.load_study(study_name="full", storage=open_storage()).user_attrs["big"] == "x" * 65536
    assert not backups(small_disk)
    assert sum("waiting up to" in r.getMessage() for r in caplog.records) == 1, "one line per incident"


# --- 2. passwords with URL-special characters ----------------------------------------------------------------

SPECIALS = string.punctuation + " "
# Every special character, between fragments ("Qz", "Vk", "J7") found nowhere else in a URL or a message.
PASSWORDS = [f"Qz{c}Vk{c}J7" for c in SPECIALS] + ["Qz%41Vk%2fJ7"]


def forms(password: str, host: str = "db.example:5432") -> list[str]:
    """URLs carrying ``password``: percent-encoded, as typed (where that means the same), in the query."""
    enc = quote(password, safe="")
    urls = [f"postgresql+psycopg://alice:{enc}@{host}/enstune?connect_timeout=2",
            f"postgresql+psycopg://alice@{host}/enstune?password={enc}&connect_timeout=2",
            f"postgresql+psycopg:///enstune?host={host.split(':')[0]}&port={host.split(':')[1]}&user=alice"
            f"&password={enc}"]
    if "%" not in password:  # as typed, "%41" would be read as an escape
        urls.append(f"postgresql+psycopg://alice:{password}@{host}/enstune?connect_timeout=2")
    return urls


def leaks(text: str) -> list[str]:
    return [frag for frag in ("Qz", "Vk", "J7") if frag in text]


@pytest.mark.parametrize("password", PASSWORDS)
def test_mask_url_hides_a_password_with_any_special_character(password):
    from enstune.storage import mask_url, mask_url_text

    for url in forms(password):
        masked = mask_url(url)
        assert not leaks(masked) and "***" in masked and "db.example" in masked, (url, masked)
        message = (f"cannot open {url}: password {password} / {quote(password, safe='')} / "
                   f"{quote(password)} / {quote_plus(password)} rejected by db.example")
        text = mask_url_text(message, url)
        assert not leaks(text) and "db.example" in text, (url, text)
        assert mask_url_text(text, url) == text  # the CLI masks an already masked message again


@pytest.mark.parametrize("url, masked", [
    ("postgresql+psycopg://u:p%40ss%2Fw:rd@host/db", "postgresql+psycopg://u:***@host/db"),
    ("postgresql+psycopg://u:pa?ss@host/db", "postgresql+psycopg://u:***@host/db"),
    ("postgresql+psycopg://u:pa#ss@host/db", "postgresql+psycopg://u:***@host/db"),
    ("postgresql+psycopg://u:db@db.example/enstune", "postgresql+psycopg://u:***@db.example/enstune"),
    ("postgresql+psycopg://u@h/db?password=p%26ss&sslmode=require",
     "postgresql+psycopg://u@h/db?password=***&sslmode=require"),
    ("postgresql:u:s3cr3t@db.example/enstune", "postgresql:u:***@db.example/enstune"),  # not a URL to SQLAlchemy
    ("postgresql:al@ice:s3cr3t@db.example/enstune", "postgresql:al@ice:***@db.example/enstune"),
    ("postgresql+psycopg://al@ice:s3%3Acr3t@db.example/enstune",
     "postgresql+psycopg://al%40ice:***@db.example/enstune"),
    ("sqlite:////tmp/a@b/studies.db", "sqlite:////tmp/a@b/studies.db"),  # no password: left as written
])
def test_mask_url_renders_the_parsed_url(url, masked):
    from enstune.storage import mask_url

    assert mask_url(url) == masked


@pytest.mark.parametrize("password", ["Qz@Vk@J7", "Qz@Vk/J7", "Qz@Vk?J7", "Qz@Vk#J7"])
def test_a_raw_at_sign_in_the_password_is_refused_and_masked(password):
    from enstune.storage import mask_url, mask_url_text, open_storage

    url = f"postgresql+psycopg://alice:{password}@db.example/enstune"
    assert not leaks(mask_url(url)) and "***" in mask_url(url), mask_url(url)
    assert not leaks(mask_url_text(f"cannot open {url}: {password} refused", url))
    with pytest.raises(EnstuneError, match="%40") as refused:
        open_storage(url)
    assert not leaks(str(refused.value)), refused.value


def test_a_password_that_is_part_of_the_host_leaves_the_host_in_the_url():
    from enstune.storage import mask_url_text

    url = "postgresql+psycopg://u:example@db.example/enstune"
    text = mask_url_text(f"cannot open storage {url}: password example refused", url)
    assert text == "cannot open storage postgresql+psycopg://u:***@db.example/enstune: password *** refused"
    assert mask_url_text(text, url) == text


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_connection_error_never_shows_the_password(password):
    from enstune.storage import open_storage

    for url in forms(password, host="127.0.0.1:1"):  # nothing listens on port 1
        with pytest.raises(EnstuneError) as failed:
            open_storage(url)
        message = str(failed.value)
        assert not leaks(message) and "***" in message and len(message.splitlines()) == 1, (url, message)


@pytest.mark.parametrize("command", [["study", "create", "starsse-demo"], ["study", "show", "x"],
                                     ["study", "show", "x", "--json"], ["study", "list"]])
def test_cli_errors_never_show_a_password_with_special_characters(command):
    for password in ("Qz?Vk?J7", "Qz#Vk#J7", "Qz/Vk:J7", "Qz%40Vk%2FJ7", "Qz@Vk@J7"):
        url = f"postgresql+psycopg://alice:{password}@127.0.0.1:1/enstune"
        result = invoke(*command, "--storage", url)
        assert result.exit_code == 1
        assert not leaks(result.stdout + result.stderr) and "***" in result.stderr, result.stderr


# --- 3. two `enstune storage up` at once ---------------------------------------------------------------------


def test_two_concurrent_storage_up_start_one_cluster():
    home = reachable_tmpdir("enstune-race-")
    env = {**os.environ, "ENSTUNE_HOME": str(home)}
    try:
        procs = [subprocess.Popen([ENSTUNE, "storage", "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=env) for _ in range(2)]
        results = [(p.wait(timeout=180), p.stdout.read().strip(), p.stderr.read().strip()) for p in procs]
        assert [rc for rc, _, _ in results] == [0, 0], results
        (url,) = {out for _, out, _ in results}
        assert url.startswith("postgresql+psycopg://") and optuna.get_all_study_names(url) == []
    finally:
        down = subprocess.run([ENSTUNE, "storage", "down", "--purge"], capture_output=True, text=True, env=env)
        shutil.rmtree(home, ignore_errors=True)
    assert down.returncode == 0, down.stderr


# --- 4. a study name longer than the database's column -------------------------------------------------------


def test_a_study_name_too_long_for_the_database_is_a_one_line_error(pg):
    from enstune import study as st
    from enstune.storage import open_storage

    url = pg.url()
    with pytest.raises(EnstuneError, match="study name is 513 characters; at most 512"):
        st.create("starsse-demo", name="n" * 513, storage_url=url)
    result = invoke("study", "create", "starsse-demo", "--name", "é" * 600, "--storage", url)
    assert result.exit_code == 1 and result.stderr.startswith("error: study name is 600 characters"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    longest = "m" * 512
    assert st.create("starsse-demo", name=longest, storage_url=url) == (longest, True)
    assert longest in optuna.get_all_study_names(open_storage(url))


# --- 1b. signals during journal writes ---------------------------------------------------------------------


def _flood(signum: int, stop: threading.Event, every: float) -> None:
    while not stop.is_set():
        os.kill(os.getpid(), signum)
        time.sleep(every)


@pytest.mark.parametrize("every", [1e-3, 4e-3])
def test_interrupts_raised_during_journal_writes_never_break_the_lock_or_a_line(tmp_path, every):
    """Ctrl-C lands anywhere in an append: it is whole or absent, the lock is released, nothing else is raised."""
    from enstune.storage.journal import journal_backend

    journal = tmp_path / "studies.journal"
    backend = journal_backend(journal)
    armed = False  # the handler raises only inside the try below, and once per arming

    def interrupt(_signum, _frame):
        nonlocal armed
        if armed:
            armed = False
            raise KeyboardInterrupt

    interrupts, faults, appended = 0, [], 0
    stop = threading.Event()
    before = signal.signal(signal.SIGINT, interrupt)
    flood = threading.Thread(target=_flood, args=(signal.SIGINT, stop, every), daemon=True)
    flood.start()
    try:
        deadline = time.monotonic() + 20
        while interrupts < 300 and time.monotonic() < deadline:
            try:
                armed = True
                backend.append_logs([{"op_code": 0, "worker_id": "w", "study_name": f"s{appended}",
                                      "directions": [1]}])
                appended += 1
                armed = False
            except KeyboardInterrupt:
                interrupts += 1
            except Exception as exc:  # noqa: BLE001 - what an interrupt must never turn into
                armed = False
                faults.append(f"{type(exc).__name__}: {exc}")
    finally:
        stop.set()
        flood.join()
        signal.signal(signal.SIGINT, before)
    lines = journal.read_bytes().splitlines(keepends=True)
    assert interrupts >= 100 and len(lines) >= 100, (interrupts, len(lines))
    # Before: about 3 interrupts in 100 became "No such file or directory" (Optuna's lock, cut in its release).
    assert faults == [], faults[:3]
    assert not os.path.lexists(f"{journal}.lock"), "an interrupt left the lock taken"
    assert all(json.loads(line)["op_code"] == 0 and line.endswith(b"\n") for line in lines)
    assert len(lines) >= appended  # every append that returned is there (one cut after its write may be too)


def test_an_interrupt_while_another_writer_holds_the_lock_waits_for_it_and_steals_nothing(tmp_path):
    from enstune.storage.journal import journal_backend

    journal = tmp_path / "studies.journal"
    backend = journal_backend(journal)
    other = JournalFileSymlinkLock(str(journal))  # another process, half-way through its write
    other.acquire()
    released: list = []

    def other_writer() -> None:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while this process waits for the lock
        time.sleep(0.3)
        try:
            other.release()
            released.append("released")
        except RuntimeError as exc:  # Optuna's words for a lock someone else took away
            released.append(str(exc))

    thread = threading.Thread(target=other_writer)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            backend.append_logs([{"op_code": 0, "worker_id": "w", "study_name": "s", "directions": [1]}])
    finally:
        thread.join()
    assert released == ["released"]
    assert [json.loads(line)["study_name"] for line in journal.read_bytes().splitlines()] == ["s"]
    assert not os.path.lexists(f"{journal}.lock")
