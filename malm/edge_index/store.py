"""The recipe store: SQLite, the embedded database every device already has.

One row per indexed recipe, keyed by the index label, with the text an app shows and the detected
ingredient names used to filter ("no peanuts"). Bundled stores are opened read-only and immutable, so
reading never writes a journal into the bundle (its sha256 must not change); updates are made on a
copy that replaces the file atomically (see builder.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from malm.edge_index.records import RecipeRecord, ingredient_names, name_words
from malm.errors import BundleError, MalmError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE recipes (
    label INTEGER PRIMARY KEY,       -- the hnswlib label
    id TEXT NOT NULL UNIQUE,         -- the corpus id
    title TEXT NOT NULL,
    ingredients TEXT NOT NULL,       -- JSON list of ingredient lines
    instructions TEXT NOT NULL,      -- JSON list of steps
    url TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '[]', -- JSON list
    names TEXT NOT NULL DEFAULT '[]' -- JSON list of detected ingredient names
);
CREATE TABLE ingredient_words (word TEXT NOT NULL, label INTEGER NOT NULL, PRIMARY KEY (word, label))
    WITHOUT ROWID;
"""


class RecipeStore:
    """Thread-safe access to one SQLite recipe store (one connection guarded by a lock)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, writable: bool) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.path = path
        self.writable = writable

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> RecipeStore:
        """A new empty store at `path` (which must not exist: build into a temp path, then rename)."""
        path = Path(path)
        if path.exists() and path.stat().st_size > 0:
            raise MalmError(f"recipe store {path}: already exists")
        conn = sqlite3.connect(str(path), check_same_thread=False)
        conn.executescript(_SCHEMA)
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        conn.commit()
        return cls(conn, path, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike[str], writable: bool = False) -> RecipeStore:
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"recipe store {path}: file not found")
        try:
            if writable:
                conn = sqlite3.connect(str(path), check_same_thread=False)
            else:
                # immutable=1: no locks, no journal, nothing written beside the bundled file.
                conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True,
                                       check_same_thread=False)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise BundleError(f"recipe store {path}: not a malm recipe store ({e})") from None
        if row is None or str(row[0]) != str(SCHEMA_VERSION):
            conn.close()
            raise BundleError(f"recipe store {path}: schema version {row and row[0]!r}, expected {SCHEMA_VERSION}")
        return cls(conn, path, writable)

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> RecipeStore:
        """A read-only store over a private in-memory copy of `data` (a store file's bytes, already verified by
        the caller): what was hashed is what is read, however the file changes later."""
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            conn.deserialize(data)
            conn.execute("PRAGMA query_only = 1")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except (sqlite3.DatabaseError, OverflowError, UnicodeDecodeError) as e:
            conn.close()
            raise BundleError(f"recipe store {where}: not a malm recipe store ({e})") from None
        if row is None or str(row[0]) != str(SCHEMA_VERSION):
            conn.close()
            raise BundleError(f"recipe store {where}: schema version {row and row[0]!r}, expected {SCHEMA_VERSION}")
        return cls(conn, Path(where), writable=False)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> RecipeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # writes ----------------------------------------------------------------------------------
    def insert(self, labels: Sequence[int], records: Sequence[RecipeRecord]) -> None:
        if len(labels) != len(records):
            raise ValueError("insert: labels and records differ in length")
        rows: list[tuple[int, str, str, str, str, str, str, str]] = []
        words: list[tuple[str, int]] = []
        for label, rec in zip(labels, records, strict=True):
            names = ingredient_names(rec.ingredients, rec.names)
            rows.append((int(label), rec.id, rec.title, json.dumps(list(rec.ingredients)),
                         json.dumps(list(rec.instructions)), rec.url, json.dumps(list(rec.tags)), json.dumps(names)))
            words.extend({(w, int(label)) for name in names for w in name.split()})
        with self._lock:
            try:
                self._conn.executemany("INSERT INTO recipes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.IntegrityError as e:
                self._conn.rollback()
                raise MalmError(f"recipe store {self.path}: {e} (duplicate recipe id?)") from None
            self._conn.executemany("INSERT OR IGNORE INTO ingredient_words VALUES (?, ?)", words)
            self._conn.commit()

    def delete(self, labels: Iterable[int]) -> None:
        params = [(int(v),) for v in labels]
        with self._lock:
            self._conn.executemany("DELETE FROM recipes WHERE label = ?", params)
            self._conn.executemany("DELETE FROM ingredient_words WHERE label = ?", params)
            self._conn.commit()

    # reads -------------------------------------------------------------------------------------
    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM recipes").fetchone()[0])

    def labels(self) -> list[int]:
        with self._lock:
            return [int(r[0]) for r in self._query("SELECT label FROM recipes ORDER BY label")]

    def ids(self) -> set[str]:
        with self._lock:
            return {str(r[0]) for r in self._conn.execute("SELECT id FROM recipes")}

    def labels_for_ids(self, ids: Iterable[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        with self._lock:
            for rid in ids:
                row = self._conn.execute("SELECT label FROM recipes WHERE id = ?", (rid,)).fetchone()
                if row is not None:
                    out[rid] = int(row[0])
        return out

    def get(self, labels: Sequence[int]) -> dict[int, RecipeRecord]:
        """Records by label (labels not in the store are absent from the result)."""
        out: dict[int, RecipeRecord] = {}
        with self._lock:
            for start in range(0, len(labels), 500):  # stay under SQLite's variable limit
                chunk = [int(v) for v in labels[start:start + 500]]
                marks = ",".join("?" * len(chunk))
                for row in self._query(
                        f"SELECT label, id, title, ingredients, instructions, url, tags FROM recipes "
                        f"WHERE label IN ({marks})", chunk):
                    out[int(row[0])] = self._record(row)
        return out

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as e:  # a corrupted page, a missing table or column
            raise BundleError(f"recipe store {self.path}: cannot be read ({e})") from None
        except UnicodeDecodeError:  # a TEXT cell that is not UTF-8
            raise BundleError(f"recipe store {self.path}: a text column is not UTF-8") from None

    def _record(self, row: Any) -> RecipeRecord:
        """A row as a RecipeRecord, each column checked (the store is bundle input: untrusted)."""
        label = row[0]
        for col, value in zip(("id", "title", "url"), (row[1], row[2], row[5]), strict=True):
            if not isinstance(value, str):
                raise BundleError(f"recipe store {self.path}: recipe {label} column '{col}' is not text")
        lists = [self._text_list(label, col, v) for col, v in (("ingredients", row[3]), ("instructions", row[4]),
                                                                ("tags", row[6]))]
        try:
            return RecipeRecord(id=str(row[1]), title=str(row[2]), ingredients=lists[0], instructions=lists[1],
                                url=str(row[5]), tags=lists[2])
        except ValueError as e:  # RecordError: e.g. an empty id
            raise BundleError(f"recipe store {self.path}: recipe {label} is not a valid recipe ({e})") from None

    def _text_list(self, label: object, col: str, value: object) -> tuple[str, ...]:
        try:
            items = json.loads(value) if isinstance(value, (str, bytes)) else None
        except (ValueError, RecursionError):
            items = None
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise BundleError(f"recipe store {self.path}: recipe {label} column '{col}' is not a JSON list of text")
        return tuple(items)

    def names(self, label: int) -> list[str]:
        with self._lock:
            found = self._query("SELECT names FROM recipes WHERE label = ?", (int(label),))
            row = found[0] if found else None
        return [] if row is None else list(self._text_list(label, "names", row[0]))

    def labels_with_ingredient(self, term: str) -> set[int]:
        """Labels of recipes whose detected ingredient names contain `term` ("peanut", "peanut butter")."""
        words = name_words(term)
        if not words:
            raise MalmError(f"ingredient filter {term!r}: no words to match")
        uniq = sorted(set(words))
        marks = ",".join("?" * len(uniq))
        with self._lock:
            rows = self._query(
                f"SELECT label FROM ingredient_words WHERE word IN ({marks}) GROUP BY label "
                f"HAVING COUNT(DISTINCT word) = ?", (*uniq, len(uniq)))
            labels = {int(r[0]) for r in rows if isinstance(r[0], int)}
            if len(words) == 1:
                return labels
            # Several words must appear together, in order, in one ingredient name.
            phrase = f" {' '.join(words)} "
            out = set()
            for label in labels:
                found = self._query("SELECT names FROM recipes WHERE label = ?", (label,))
                row = found[0] if found else None
                if row is not None and any(phrase in f" {n} " for n in self._text_list(label, "names", row[0])):
                    out.add(label)
            return out
