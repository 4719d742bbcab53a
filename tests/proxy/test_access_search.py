"""The admin page's access-log search: exact request ids, a bounded tail, cut and broken lines skipped."""

from __future__ import annotations

import json
from pathlib import Path

from meshkit.proxy.access_search import find_lines


def _line(request_id: str | None, status: int, direction: str = "outbound") -> str:
    return json.dumps({"request_id": request_id, "status": status, "direction": direction},
                      separators=(",", ":")) + "\n"


def test_finds_every_line_of_one_request_and_no_other(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_text(_line("abc", 200) + _line("abcd", 500) + _line(None, 404) + _line("abc", 503, "inbound")
                   + '{"request_id":"abc","status":2')  # a line still being written
    found = find_lines(str(log), "abc")
    assert [(f["status"], f["direction"]) for f in found] == [(200, "outbound"), (503, "inbound")]
    assert find_lines(str(log), 'a"b') == []  # quoting is JSON's: no accidental match
    assert len(find_lines(str(log), "abc", limit=1)) == 1


def test_only_the_tail_is_read(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    old = _line("old", 200)
    log.write_text(old * 1000 + _line("new", 200))
    assert find_lines(str(log), "old", tail=len(old) * 3) != []  # the cut first line is skipped
    assert len(find_lines(str(log), "old", tail=len(old) * 3, limit=100)) == 2
    assert len(find_lines(str(log), "new", tail=len(old) * 3)) == 1
