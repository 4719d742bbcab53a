"""``sidecar_profile.py`` reads py-spy's collapsed stacks right: the innermost frame gets the samples."""

from __future__ import annotations

from pathlib import Path

from sidecar_profile import spy_lines  # benchmarks/ is on sys.path (conftest.py)


def test_the_innermost_frame_of_each_stack_gets_its_samples(tmp_path: Path) -> None:
    raw = tmp_path / "spy.txt"
    raw.write_text("main (m.py:1);run (r.py:2);write (w.py:3) 30\n"
                   "main (m.py:1);run (r.py:2) 60\n"
                   "main (m.py:1);run (r.py:2);write (w.py:3) 10\n"
                   "\n")
    assert spy_lines(raw, 5) == [" 60.0%  run (r.py:2)", " 40.0%  write (w.py:3)"]
    assert spy_lines(raw, 1) == [" 60.0%  run (r.py:2)"]


def test_an_empty_recording_gives_no_lines(tmp_path: Path) -> None:
    raw = tmp_path / "spy.txt"
    raw.write_text("")
    assert spy_lines(raw, 5) == []
