"""What ``meshkit analyze -f`` reads: every file's resources, the loader's findings, and where each
resource starts (file and line), keeping apart input that could not be read at all.

As ``istioctl analyze``: a file that is missing, not UTF-8 or not YAML makes the input unreadable
(exit 65); a document that parses but is not valid Istio (an unknown field, a missing host) is a
finding like the analyzer's (an Error: exit 79), and the file's other documents are still analyzed.
No printing and no exiting here: `meshkit.cli.config_verbs.analyze` does both.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshkit.config import codes
from meshkit.config.loader import FILE_SUFFIXES, load_resources
from meshkit.config.locations import Location, index_locations, merge
from meshkit.config.messages import ConfigError, Message, Severity

# loader codes meaning "this text could not be read", not "this resource is wrong"
UNREADABLE_CODES = frozenset({codes.MK0001, codes.MK0002, codes.MK0008})


@dataclass
class AnalysisInput:
    documents: list[dict[str, Any]] = field(default_factory=list)  # valid resources, as Istio dicts
    invalid: list[dict[str, str]] = field(default_factory=list)  # loader findings about readable documents
    unreadable: list[dict[str, str]] = field(default_factory=list)  # why some input could not be read
    index: dict[str, Location] = field(default_factory=dict)  # resource reference -> (file, line)


def _texts(files: list[str], found: AnalysisInput) -> list[tuple[str, str]]:
    texts: list[tuple[str, str]] = []
    for name in files:
        path = Path(name)
        try:
            if name == "-":
                texts.append(("<stdin>", sys.stdin.read()))
            elif path.is_dir():
                texts += [(str(p), p.read_text(encoding="utf-8")) for p in sorted(path.iterdir())
                          if p.is_file() and p.suffix in FILE_SUFFIXES]
            else:
                texts.append((name, path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as error:
            reason = "no such file or directory" if not path.exists() and name != "-" else str(error)
            found.unreadable.append(Message(codes.MK0002, Severity.ERROR, name, "",
                                            f"cannot read file: {reason}").to_dict())
    return texts


def read_for_analysis(files: list[str]) -> AnalysisInput:
    """Every file's valid resources, the loader's findings, and the locations of the resources."""
    found = AnalysisInput()
    indexes = []
    for origin, text in _texts(files, found):
        indexes.append(index_locations(text, origin))
        ignored: list[Message] = []
        try:
            resources = load_resources(text, origin=origin, warnings=ignored)
        except ConfigError as error:
            if any(m.code in UNREADABLE_CODES for m in error.messages):
                found.unreadable += [m.to_dict() for m in error.messages if m.code in UNREADABLE_CODES]
                continue
            found.invalid += [m.to_dict() for m in error.messages]
            resources = _valid_documents(text, origin)
        found.invalid += [m.to_dict() for m in ignored]
        found.documents += [r.to_dict() for r in resources]
    found.index = merge(indexes)
    return found


def _valid_documents(text: str, origin: str) -> list[Any]:
    """The documents of ``text`` that load on their own (the text parsed: only schema errors remain)."""
    import yaml  # noqa: PLC0415

    valid = []
    for document in yaml.safe_load_all(text):
        if not isinstance(document, dict):
            continue
        try:
            valid += load_resources(document, origin=origin)
        except ConfigError:
            continue
    return valid
