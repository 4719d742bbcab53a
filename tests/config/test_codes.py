"""The message-code registry (meshkit/config/codes.py) is the one table of MK codes.

Codes are unique, every MKxxxx the source, the tests and the docs name is registered, the sources
report codes only through the registry (no ``"MK0101"`` literal outside it; the sidecar, which
cannot import config, reports none that is not registered), and docs/config-reference.md's table
is exactly what the registry generates.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from meshkit.config import codes
from meshkit.config.messages import Severity

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "meshkit" / "config" / "codes.py"
LITERAL = re.compile(r"""["'](MK\d{4})["']""")


def _files(*parts: str, suffixes: tuple[str, ...] = (".py",)) -> list[Path]:
    found: list[Path] = []
    for part in parts:
        found.extend(p for p in (ROOT / part).rglob("*") if p.suffix in suffixes and p.is_file())
    return sorted(found)


def test_codes_are_unique_and_well_formed() -> None:
    table = [entry.code for entry in codes._TABLE]
    assert len(table) == len(set(table)), sorted(c for c in table if table.count(c) > 1)
    assert set(codes.CODES) == set(table)
    for entry in codes.CODES.values():
        assert re.fullmatch(r"MK\d{4}", entry.code), entry
        assert isinstance(entry.severity, Severity)
        assert entry.meaning and "\n" not in entry.meaning, entry
        assert not entry.istio or re.fullmatch(r"IST\d{4} [A-Za-z]+", entry.istio), entry


def test_every_constant_is_registered_under_its_own_name() -> None:
    constants = {name: value for name, value in vars(codes).items() if re.fullmatch(r"MK\d{4}", name)}
    assert constants, "codes.MKxxxx constants are missing"
    assert {name for name, value in constants.items() if name != value} == set()
    assert set(constants) == set(codes.CODES), "a code without a constant, or a constant without a code"


def test_every_code_named_anywhere_is_registered() -> None:
    named: dict[str, set[str]] = {}
    for path in (*_files("meshkit", "tests", "operator"), *_files("docs", suffixes=(".md",)),
                 *_files("labs", suffixes=(".ipynb", ".md", ".py")), ROOT / "README.md"):
        for code in codes.CODE_PATTERN.findall(path.read_text(encoding="utf-8")):
            named.setdefault(code, set()).add(str(path.relative_to(ROOT)))
    unknown = {code: sorted(where) for code, where in named.items() if code not in codes.CODES}
    assert unknown == {}


def test_sources_report_codes_through_the_registry() -> None:
    literals = {
        f"{path.relative_to(ROOT)}: {code}"
        for path in _files("meshkit") if path != REGISTRY
        for code in LITERAL.findall(path.read_text(encoding="utf-8"))
    }
    assert literals == set(), "use codes.MKxxxx instead of a string literal"


def test_the_sidecar_reports_only_registered_codes() -> None:
    """The proxy may not import config: any code it reports is a plain string, and must be registered."""
    in_proxy = {
        code for path in _files("meshkit/proxy")
        for code in codes.CODE_PATTERN.findall(path.read_text(encoding="utf-8"))
    }
    assert in_proxy <= set(codes.CODES), sorted(in_proxy - set(codes.CODES))


def test_get_names_an_unknown_code() -> None:
    assert codes.get("MK0101").severity is Severity.ERROR
    assert codes.get(codes.MK0960).area == "telemetry"
    try:
        codes.get("MK" + "9999")
    except KeyError as error:
        assert "9999 is not a registered meshkit code" in str(error)
    else:
        raise AssertionError("get() accepted an unregistered code")


def test_config_reference_table_is_generated_from_the_registry() -> None:
    doc = (ROOT / "docs" / "config-reference.md").read_text(encoding="utf-8")
    assert codes.markdown() in doc, "run: python -m meshkit.config.codes --write docs/config-reference.md"
    assert codes.replace_table(doc) == doc
    listed = re.findall(r"^\| (MK\d{4}) \|", doc, flags=re.M)
    assert listed == [entry.code for entry in codes._TABLE], "a second, hand-written code table"


def test_module_prints_the_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshkit.config.codes", "--markdown"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    assert result.stdout == codes.markdown()
