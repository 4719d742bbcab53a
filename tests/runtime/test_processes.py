"""Process supervision: detached start, clean stop, and no signal ever sent to a reused pid."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from meshkit.runtime.processes import ProcessRecord, owned_by, rss_bytes, spawn, stop


def _sleeper(tmp_path: Path, name: str, *, ignore_term: bool = False) -> ProcessRecord:
    code = "import signal, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('up', flush=True)\ntime.sleep(60)\n"
    return spawn(name, [sys.executable, "-c", code], log=tmp_path / f"{name}.log")


def test_spawned_process_is_alive_then_stopped(tmp_path: Path) -> None:
    rec = _sleeper(tmp_path, "a")
    assert rec.alive()
    assert rss_bytes(rec.pid) > 0
    assert stop([rec]) == []
    assert not rec.alive()


def test_stubborn_process_is_killed_after_grace(tmp_path: Path) -> None:
    rec = _sleeper(tmp_path, "stubborn", ignore_term=True)
    # Give it time to install the handler before we signal it.
    for _ in range(100):
        if "up" in Path(rec.log).read_text():
            break
        time.sleep(0.05)
    assert stop([rec], grace=0.5) == ["stubborn"]
    assert not rec.alive()


def test_record_survives_json_and_refuses_reused_pid(tmp_path: Path) -> None:
    rec = _sleeper(tmp_path, "b")
    again = ProcessRecord.from_json(rec.to_json())
    assert again == rec and again.alive()
    # Same pid, different start time: this is a different process; we must not touch it.
    imposter = ProcessRecord(rec.name, rec.pid, (rec.start_ticks or 0) + 1, rec.argv, rec.log)
    assert not imposter.alive()
    assert stop([imposter]) == []
    assert rec.alive()
    stop([rec])


def test_owned_by_finds_unrecorded_processes_of_one_owner_only(tmp_path: Path) -> None:
    mine = spawn("mine", [sys.executable, "-c", "import time; time.sleep(60)"], log=tmp_path / "m.log",
                 owner=str(tmp_path / "home"))
    other = spawn("other", [sys.executable, "-c", "import time; time.sleep(60)"], log=tmp_path / "o.log",
                  owner=str(tmp_path / "elsewhere"))
    try:
        found = owned_by(str(tmp_path / "home"))
        assert [r.pid for r in found] == [mine.pid]
        assert found[0].start_ticks == mine.start_ticks and "time.sleep(60)" in found[0].argv[-1]
        assert stop(found) == []
        assert not mine.alive() and other.alive()
        assert owned_by(str(tmp_path / "home")) == []
    finally:
        stop([mine, other])

