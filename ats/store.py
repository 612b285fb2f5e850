"""The results database: one SQLite file of policy scores, written as each policy finishes.

Gao et al. (CVPR 2021), §4.4 score 1,500 candidate policies, a job that takes hours; the
original wrote one `.npy` file per policy and per score into folders named only by dataset and
architecture, so results of different score definitions or checkpoints overwrote each other.
Here every row is keyed by (policy, score definition, checkpoint hash, seed) and upserted in its
own transaction, so a search that is interrupted (Ctrl-C, `kill -9`) and restarted neither loses
nor duplicates a row. The file runs in WAL mode, so readers (`ats search --show`, the app) never
block the writer.

Two searches on one file split the work: before scoring a policy a writer claims it (`claim`, a
row of `claims` naming its host and process), and skips policies another live writer holds or
has stored; a writer's claims die with its process. Every SQLite failure (a damaged file, a
read-only one, a table missing) and every damaged stored value is a one-line ValueError naming
the file.

The schema is versioned in the `meta` table; each later table (attack runs, benchmark rows) is a
new migration step in `_MIGRATIONS`. The claims, and the failures of units of work a run recorded
and went on without (`put_failure`: a policy or a cell whose Ray task kept failing), are
bookkeeping, not results: their tables are made when missing, outside the version, so older
versions of ats still open the file.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import socket
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

FORMAT = "ats-results"
SCHEMA_VERSION = 2
CLAIM_SECONDS = 6 * 3600  # a claim from another host (or a reused pid) lapses after this long
_TABLES = {1: "scores", 2: "benchmark"}  # the table each schema version adds
_MIGRATIONS = {  # version -> statements that bring the schema from version-1 to version
    1: (
        """CREATE TABLE scores (
               policy TEXT NOT NULL,
               definition TEXT NOT NULL,
               checkpoint TEXT NOT NULL,
               seed INTEGER NOT NULL,
               privacy REAL,
               accuracy REAL,
               accuracy_normalized REAL,
               per_image TEXT NOT NULL,
               images INTEGER NOT NULL,
               seconds REAL NOT NULL,
               created TEXT NOT NULL,
               PRIMARY KEY (policy, definition, checkpoint, seed))""",
    ),
    2: (
        """CREATE TABLE benchmark (
               study TEXT NOT NULL,
               policy TEXT NOT NULL,
               defense TEXT NOT NULL,
               attack TEXT NOT NULL,
               checkpoint TEXT NOT NULL,
               images INTEGER NOT NULL,
               iterations INTEGER NOT NULL,
               seed INTEGER NOT NULL,
               summary TEXT NOT NULL,
               per_image TEXT NOT NULL,
               seconds REAL NOT NULL,
               created TEXT NOT NULL,
               PRIMARY KEY (study, policy, defense, attack, checkpoint, images, iterations, seed))""",
    ),
}
_CLAIMS = """CREATE TABLE IF NOT EXISTS claims (
                 policy TEXT NOT NULL,
                 definition TEXT NOT NULL,
                 checkpoint TEXT NOT NULL,
                 seed INTEGER NOT NULL,
                 owner TEXT NOT NULL,  -- host/pid/token of the writer scoring it
                 claimed REAL NOT NULL,
                 PRIMARY KEY (policy, definition, checkpoint, seed))"""
_FAILURES = """CREATE TABLE IF NOT EXISTS failures (
                   kind TEXT NOT NULL,  -- "score" or "benchmark"
                   key TEXT NOT NULL,  -- the JSON list of the row's key
                   error TEXT NOT NULL,
                   created TEXT NOT NULL,
                   PRIMARY KEY (kind, key))"""
_COLUMNS = ("policy", "definition", "checkpoint", "seed", "privacy", "accuracy", "accuracy_normalized",
            "per_image", "images", "seconds", "created")


@dataclass(frozen=True)
class ScoreRow:
    """One policy's S_pri and S_acc under one score definition, checkpoint and seed."""

    policy: str
    definition: str
    checkpoint: str
    seed: int
    privacy: float  # S_pri, lower = more private
    accuracy: float  # S_acc, higher = better expected accuracy
    accuracy_normalized: float
    per_image: tuple[float, ...]  # the per-image (or per-class) S_pri values behind `privacy`
    images: int
    seconds: float
    created: str = ""

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.policy, self.definition, self.checkpoint, self.seed)

    @property
    def variance(self) -> float:
        """Population variance of `per_image` (the HEAD code's spread term)."""
        values = self.per_image
        if not values:
            return math.nan
        mean = sum(values) / len(values)
        return sum((v - mean) ** 2 for v in values) / len(values)

    def passes(self, threshold: float) -> bool:
        """True when S_acc ≥ `threshold` (NaN never passes)."""
        return self.accuracy >= threshold

    def to_dict(self) -> dict:
        return {"policy": self.policy, "privacy": self.privacy, "accuracy": self.accuracy,
                "accuracy_normalized": self.accuracy_normalized, "images": self.images,
                "seconds": round(self.seconds, 3), "seed": self.seed, "checkpoint": self.checkpoint}


@dataclass(frozen=True)
class BenchmarkRow:
    """One benchmark cell: a policy × defense × attack on one model, over `images` attacked images.

    `summary` holds the aggregates (psnr_tx_mean, psnr_x_mean, accuracy, …), `per_image` each
    image's numbers (psnr_x, psnr_tx, …; "_x" against the original x, "_tx" against T(x)); `study`
    says which part of the protocol it belongs to (table, aware, correlation).
    """

    study: str
    policy: str
    defense: str
    attack: str
    checkpoint: str
    images: int
    iterations: int
    seed: int
    summary: dict
    per_image: tuple[dict, ...]
    seconds: float
    created: str = ""

    @property
    def key(self) -> tuple:
        return (self.study, self.policy, self.defense, self.attack, self.checkpoint, self.images,
                self.iterations, self.seed)


@dataclass(frozen=True)
class Group:
    """How many score rows the database holds for one (definition, checkpoint, seed)."""

    definition: str
    checkpoint: str
    seed: int
    rows: int


def _real(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value  # SQLite has no NaN; NULL reads back as NaN


def _float(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _problem(path: Path, error: sqlite3.Error) -> str:
    """One line saying what is wrong with the database at `path`, from SQLite's `error`."""
    text = str(error)
    if "readonly" in text or "read-only" in text:
        return f"results database {path} is read-only; make it writable or give another --db"
    if "malformed" in text or "not a database" in text or "corrupt" in text:
        return f"results database {path} is damaged ({text}); restore a copy or give another --db"
    if "locked" in text or "busy" in text:
        return f"results database {path} stayed locked by another process ({text}); try again"
    if "no such table" in text or "no such column" in text:
        return f"results database {path} lacks part of its schema ({text}); give another --db"
    return f"results database {path}: {text}"


def _guarded(method):
    """`method` of a Store, with every SQLite error turned into a one-line ValueError naming the file."""
    @functools.wraps(method)
    def guarded(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise ValueError(_problem(self.path, error)) from error
    return guarded


def _owner_alive(owner: str, claimed: float) -> bool:
    """Whether the writer that made a claim may still be working: its process, when on this host."""
    host, _, rest = owner.partition("/")
    if time.time() - claimed > CLAIM_SECONDS:
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(rest.split("/")[0]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True  # someone else's live process, or a claim this code did not write
    return True


class Store:
    """An open results database; use `Store.open(path)` as a context manager."""

    def __init__(self, connection: sqlite3.Connection, path: Path, definition: str | None = None) -> None:
        self._db = connection
        self.path = path
        self.definition = definition
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"  # who this store's claims name
        self.writable = True  # False: a read-only file, left at its schema; reads work, writes are refused
        self._claimed = False

    @classmethod
    def open(cls, path: str | Path, *, definition: str | None = None) -> Store:
        """Open (creating if needed) the database at `path`.

        With `definition`, refuse a database whose score rows were all written under other score
        definitions, rather than mixing results that are not comparable.
        """
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"results database {path} is a folder; give a file name such as results.db")
        if not path.parent.is_dir():
            raise ValueError(f"results database {path}: folder {path.parent} does not exist")
        try:
            connection = sqlite3.connect(path, timeout=60.0, isolation_level=None)
        except sqlite3.Error as error:
            raise ValueError(_problem(path, error)) from error
        try:
            writable = _prepare(connection, path)
        except sqlite3.Error as error:
            connection.close()
            raise ValueError(_problem(path, error)) from error
        except BaseException:
            connection.close()
            raise
        store = cls(connection, path, definition)
        store.writable = writable
        if definition is not None:
            store.check_definition(definition)
        return store

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Drop this store's open claims (a crash leaves them to lapse with the process), then close."""
        if self._claimed:
            try:
                with self._db:
                    self._db.execute("DELETE FROM claims WHERE owner = ?", (self.owner,))
            except sqlite3.Error:
                pass  # a read-only or damaged file: the claims lapse with this process anyway
        self._db.close()

    @_guarded
    def check_definition(self, definition: str) -> None:
        """Raise ValueError when the database holds score rows, none of them under `definition`."""
        found = [row[0] for row in self._db.execute("SELECT DISTINCT definition FROM scores ORDER BY definition")]
        if found and definition not in found:
            others = "; ".join(repr(d) for d in found)
            raise ValueError(
                f"results database {self.path} was written by another score definition ({others}), "
                f"not by this run's {definition!r}; use another --db for this definition, or the --preset "
                f"that matches the database")

    @_guarded
    def put_score(self, row: ScoreRow) -> None:
        """Insert or replace `row` (same key: the newer values win) and commit at once."""
        if self.definition is not None and row.definition != self.definition:
            raise ValueError(f"row for {row.policy!r} has definition {row.definition!r}, but this store was "
                             f"opened for {self.definition!r}")
        values = (row.policy, row.definition, row.checkpoint, int(row.seed), _real(row.privacy),
                  _real(row.accuracy), _real(row.accuracy_normalized),
                  json.dumps([_real(v) for v in row.per_image]), int(row.images), float(row.seconds),
                  row.created or time.strftime("%Y-%m-%dT%H:%M:%S"))
        updates = ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS[4:])
        with self._db:  # one transaction per row: a crash loses at most the row being written
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(f"INSERT INTO scores ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
                             f"ON CONFLICT (policy, definition, checkpoint, seed) DO UPDATE SET {updates}", values)
            self._db.execute("DELETE FROM claims WHERE policy = ? AND definition = ? AND checkpoint = ? AND seed = ?",
                             row.key)

    @_guarded
    def claim(self, policy: str, definition: str, checkpoint: str, seed: int) -> bool:
        """Claim the right to score this key: True when no row is stored and no other live writer holds it.

        The check and the claim are one transaction, so of two writers asking at once one wins.
        `put_score` drops the claim; `close` drops the rest.
        """
        if not self.writable:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        key = (policy, definition, checkpoint, int(seed))
        where = "policy = ? AND definition = ? AND checkpoint = ? AND seed = ?"
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if self._db.execute(f"SELECT 1 FROM scores WHERE {where}", key).fetchone():
                return False
            held = self._db.execute(f"SELECT owner, claimed FROM claims WHERE {where}", key).fetchone()
            if held and held[0] != self.owner and _owner_alive(*held):
                return False
            self._db.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?, ?)", (*key, self.owner, time.time()))
        self._claimed = True
        return True

    @_guarded
    def get_scores(self, definition: str, checkpoint: str, seed: int,
                   policies: Iterable[str] | None = None) -> list[ScoreRow]:
        """The rows of one (definition, checkpoint, seed), oldest first; only `policies` when given."""
        rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM scores WHERE definition = ? AND checkpoint = ? "
                                f"AND seed = ? ORDER BY created, rowid", (definition, checkpoint, int(seed)))
        result = [_row(values, self.path) for values in rows]
        if policies is not None:
            wanted = set(policies)
            result = [r for r in result if r.policy in wanted]
        return result

    @_guarded
    def has(self, policy: str, definition: str, checkpoint: str, seed: int) -> bool:
        """True when a row with this key exists."""
        found = self._db.execute("SELECT 1 FROM scores WHERE policy = ? AND definition = ? AND checkpoint = ? "
                                 "AND seed = ?", (policy, definition, checkpoint, int(seed)))
        return found.fetchone() is not None

    @_guarded
    def put_benchmark(self, row: BenchmarkRow) -> None:
        """Insert or replace `row` in one transaction: a finished cell is never lost or duplicated."""
        created = row.created or time.strftime("%Y-%m-%dT%H:%M:%S")
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO benchmark VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (*row.key, json.dumps(row.summary, allow_nan=True),
                              json.dumps(list(row.per_image), allow_nan=True), float(row.seconds), created))

    @_guarded
    def get_benchmark(self, key: tuple) -> BenchmarkRow | None:
        """The row stored under `key` (see `BenchmarkRow.key`), or None."""
        found = self._db.execute(
            "SELECT * FROM benchmark WHERE study = ? AND policy = ? AND defense = ? AND attack = ? AND checkpoint = ? "
            "AND images = ? AND iterations = ? AND seed = ?", key).fetchone()
        return None if found is None else _benchmark_row(found, self.path)

    @_guarded
    def put_failure(self, kind: str, key: Sequence, error: str) -> None:
        """Record that the unit of work under `key` (a score's or a benchmark cell's) failed with
        `error`; a later run retries it, and a row stored under the key clears the record."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)",
                             (kind, json.dumps(list(key)), str(error), time.strftime("%Y-%m-%dT%H:%M:%S")))

    @_guarded
    def failures(self, kind: str | None = None) -> list[tuple[str, tuple, str]]:
        """The recorded failures (kind, key, error) whose key has no stored row, oldest first."""
        rows = self._db.execute("SELECT kind, key, error FROM failures ORDER BY created, rowid").fetchall()
        out = []
        for k, key, error in rows:
            key = tuple(json.loads(key))
            if kind not in (None, k):
                continue
            stored = self.has(*key) if k == "score" else self.get_benchmark(key) is not None
            if not stored:
                out.append((k, key, error))
        return out

    @_guarded
    def benchmark_rows(self) -> list[BenchmarkRow]:
        """Every benchmark row, oldest first."""
        rows = self._db.execute("SELECT * FROM benchmark ORDER BY created, rowid")
        return [_benchmark_row(r, self.path) for r in rows]

    @_guarded
    def groups(self) -> list[Group]:
        """Every (definition, checkpoint, seed) present, largest first (what `--show` lists)."""
        rows = self._db.execute("SELECT definition, checkpoint, seed, COUNT(*) FROM scores "
                                "GROUP BY definition, checkpoint, seed ORDER BY COUNT(*) DESC")
        return [Group(*values) for values in rows]


def existing_database(path: str | Path) -> Path:
    """`path` when it names an existing file (opening a missing one would create an empty database)."""
    path = Path(str(path).strip()).expanduser()
    if not str(path).strip() or str(path) == ".":
        raise ValueError("no database path given; write the path of a results .db file")
    if not path.is_file():
        raise ValueError(f"results database {path} does not exist; give the path of a file written by `ats search`")
    return path


def _damaged(path: Path, what: str, error: Exception) -> ValueError:
    return ValueError(f"results database {path}: the stored row of {what} is damaged "
                      f"({type(error).__name__}: {str(error)[:80]}); delete that row or give another --db")


def _row(values: Sequence, path: Path) -> ScoreRow:
    policy, definition, checkpoint, seed, privacy, accuracy, normalized, per_image, images, seconds, created = values
    try:
        return ScoreRow(policy, definition, checkpoint, int(seed), _float(privacy), _float(accuracy),
                        _float(normalized), tuple(_float(v) for v in json.loads(per_image)), int(images),
                        float(seconds), created)
    except (ValueError, TypeError) as error:  # broken JSON, a number that is not one, a list that is not one
        raise _damaged(path, f"policy {str(policy)[:40]!r}", error) from None


# The metric names of rows written before every name said what it compares with ("_x": the original
# x, "_tx": T(x)); `_benchmark_row` renames them on read, so old databases still load.
LEGACY_SUMMARY_KEYS = {"psnr_mean": "psnr_tx_mean", "psnr_std": "psnr_tx_std", "psnr_original_mean": "psnr_x_mean",
                       "psnr_original_std": "psnr_x_std", "ssim_mean": "ssim_tx_mean",
                       "ssim_original_mean": "ssim_x_mean"}
LEGACY_IMAGE_KEYS = {"psnr": "psnr_x", "psnr_transformed": "psnr_tx", "ssim": "ssim_x", "ssim_transformed": "ssim_tx",
                     "mse": "mse_x"}


def rename_legacy(values: dict, legacy: dict[str, str]) -> dict:
    """`values` with each key of `legacy` renamed to its current name (a current key already there wins)."""
    return {legacy.get(k, k): v for k, v in values.items() if k not in legacy or legacy[k] not in values}


def _benchmark_row(values: Sequence, path: Path) -> BenchmarkRow:
    *key, summary, per_image, seconds, created = values
    study, policy, defense, attack, checkpoint, images, iterations, seed = key
    try:
        return BenchmarkRow(study, policy, defense, attack, checkpoint, int(images), int(iterations), int(seed),
                            rename_legacy(json.loads(summary), LEGACY_SUMMARY_KEYS),
                            tuple(rename_legacy(d, LEGACY_IMAGE_KEYS) for d in json.loads(per_image)),
                            float(seconds), created)
    except (ValueError, TypeError, AttributeError) as error:
        raise _damaged(path, f"benchmark cell {str(policy)[:40]!r} × {str(defense)[:20]!r}", error) from None


def _prepare(db: sqlite3.Connection, path: Path) -> bool:
    """Check that `db` is ours (or empty), switch to WAL, and bring the schema up to date.

    Returns False for a read-only file, which is left at its schema (reads still work)."""
    try:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as error:
        raise ValueError(f"{path} is not a results database (not SQLite: {error}); give another --db") from error
    if not tables:
        db.execute("PRAGMA journal_mode = WAL")
        with db:
            db.execute("BEGIN IMMEDIATE")
            if not db.execute("SELECT name FROM sqlite_master WHERE name = 'meta'").fetchone():  # lost a race?
                db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                db.executemany("INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("schema", "0")])
        tables = {"meta"}
    if "meta" not in tables:
        raise ValueError(f"{path} is an SQLite database but not an ats results database (tables: "
                         f"{', '.join(sorted(tables))}); give another --db")
    meta = dict(db.execute("SELECT key, value FROM meta"))
    if meta.get("format") != FORMAT or not re.fullmatch(r"[0-9]{1,6}", str(meta.get("schema", ""))):
        raise ValueError(f"{path} is an SQLite database but not an ats results database "
                         f"(meta {repr(meta)[:120]}: its schema must be a whole number); give another --db")
    version = int(meta["schema"])
    if version > SCHEMA_VERSION:
        raise ValueError(f"results database {path} has schema {version}, newer than this ats understands "
                         f"({SCHEMA_VERSION}); upgrade ats or give another --db")
    missing = [_TABLES[v] for v in range(1, version + 1) if _TABLES[v] not in tables]
    if missing:
        raise ValueError(f"results database {path} says schema {version} but has no {', '.join(missing)} table; "
                         f"it is damaged or not written by ats; give another --db")
    try:
        db.execute("PRAGMA journal_mode = WAL")
        if version < SCHEMA_VERSION:
            _migrate(db)
        if "claims" not in tables:
            db.execute(_CLAIMS)
        if "failures" not in tables:
            db.execute(_FAILURES)
    except sqlite3.OperationalError as error:
        if "readonly" not in str(error):
            raise
        return False
    return True


def _migrate(db: sqlite3.Connection) -> None:
    """Bring the schema up to `SCHEMA_VERSION` in one transaction (re-read inside it: another
    process may have migrated meanwhile)."""
    with db:
        db.execute("BEGIN IMMEDIATE")
        version = int(db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0])
        for step in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[step]:
                db.execute(statement)
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(max(version, SCHEMA_VERSION)),))
