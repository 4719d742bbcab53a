"""The control plane's SQLite file: opening it and creating the tables the store and registry use.

One file (``<state dir>/control/control.db``) holds the config revisions and the registry, so a
restart of the control plane loses nothing. WAL mode keeps a write to a few milliseconds.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

DATABASE_FILE = "control.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS revisions (
    number    INTEGER PRIMARY KEY,
    timestamp REAL    NOT NULL,
    summary   TEXT    NOT NULL,
    diff      TEXT    NOT NULL,
    config    TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS registry_services (
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    doc       TEXT NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE TABLE IF NOT EXISTS registry_endpoints (
    namespace TEXT NOT NULL,
    instance  TEXT NOT NULL,
    doc       TEXT NOT NULL,
    PRIMARY KEY (namespace, instance)
);
CREATE TABLE IF NOT EXISTS registry_external (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    doc TEXT NOT NULL
);
"""


def open_database(directory: Path | str) -> sqlite3.Connection:
    """Open (creating if needed) the control plane database in ``directory``."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path / DATABASE_FILE, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(_SCHEMA)
    return connection
