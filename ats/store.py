"""The results database: one SQLite file of policy scores, written as each policy finishes.

Gao et al. (CVPR 2021), §4.4 score 1,500 candidate policies, a job that takes hours; the
original wrote one `.npy` file per policy and per score into folders named only by dataset and
architecture, so results of different score definitions or checkpoints overwrote each other.
Here every row is keyed by (policy, score definition, checkpoint hash, seed) and upserted in its
own transaction, so a search that is interrupted (Ctrl-C, `kill -9`) and restarted neither loses
nor duplicates a row. The file runs in WAL mode, so readers (`ats search --show`, the app) never
block the writer.

The schema is versioned in the `meta` table; each later table (attack runs, benchmark rows) is a
new migration step in `_MIGRATIONS`.
"""
from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

FORMAT = "ats-results"
SCHEMA_VERSION = 2
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


class Store:
    """An open results database; use `Store.open(path)` as a context manager."""

    def __init__(self, connection: sqlite3.Connection, path: Path, definition: str | None = None) -> None:
        self._db = connection
        self.path = path
        self.definition = definition

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
        connection = sqlite3.connect(path, timeout=60.0, isolation_level=None)
        try:
            _prepare(connection, path)
        except BaseException:
            connection.close()
            raise
        store = cls(connection, path, definition)
        if definition is not None:
            store.check_definition(definition)
        return store

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def check_definition(self, definition: str) -> None:
        """Raise ValueError when the database holds score rows, none of them under `definition`."""
        found = [row[0] for row in self._db.execute("SELECT DISTINCT definition FROM scores ORDER BY definition")]
        if found and definition not in found:
            others = "; ".join(repr(d) for d in found)
            raise ValueError(
                f"results database {self.path} was written by another score definition ({others}), "
                f"not by this run's {definition!r}; use another --db for this definition, or the --preset "
                f"that matches the database")

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

    def get_scores(self, definition: str, checkpoint: str, seed: int,
                   policies: Iterable[str] | None = None) -> list[ScoreRow]:
        """The rows of one (definition, checkpoint, seed), oldest first; only `policies` when given."""
        rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM scores WHERE definition = ? AND checkpoint = ? "
                                f"AND seed = ? ORDER BY created, rowid", (definition, checkpoint, int(seed)))
        result = [_row(values) for values in rows]
        if policies is not None:
            wanted = set(policies)
            result = [r for r in result if r.policy in wanted]
        return result

    def has(self, policy: str, definition: str, checkpoint: str, seed: int) -> bool:
        """True when a row with this key exists."""
        found = self._db.execute("SELECT 1 FROM scores WHERE policy = ? AND definition = ? AND checkpoint = ? "
                                 "AND seed = ?", (policy, definition, checkpoint, int(seed)))
        return found.fetchone() is not None

    def put_benchmark(self, row: BenchmarkRow) -> None:
        """Insert or replace `row` in one transaction: a finished cell is never lost or duplicated."""
        created = row.created or time.strftime("%Y-%m-%dT%H:%M:%S")
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO benchmark VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (*row.key, json.dumps(row.summary, allow_nan=True),
                              json.dumps(list(row.per_image), allow_nan=True), float(row.seconds), created))

    def get_benchmark(self, key: tuple) -> BenchmarkRow | None:
        """The row stored under `key` (see `BenchmarkRow.key`), or None."""
        found = self._db.execute(
            "SELECT * FROM benchmark WHERE study = ? AND policy = ? AND defense = ? AND attack = ? AND checkpoint = ? "
            "AND images = ? AND iterations = ? AND seed = ?", key).fetchone()
        return None if found is None else _benchmark_row(found)

    def benchmark_rows(self) -> list[BenchmarkRow]:
        """Every benchmark row, oldest first."""
        return [_benchmark_row(r) for r in self._db.execute("SELECT * FROM benchmark ORDER BY created, rowid")]

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


def _row(values: Sequence) -> ScoreRow:
    policy, definition, checkpoint, seed, privacy, accuracy, normalized, per_image, images, seconds, created = values
    return ScoreRow(policy, definition, checkpoint, int(seed), _float(privacy), _float(accuracy), _float(normalized),
                    tuple(_float(v) for v in json.loads(per_image)), int(images), float(seconds), created)


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


def _benchmark_row(values: Sequence) -> BenchmarkRow:
    *key, summary, per_image, seconds, created = values
    study, policy, defense, attack, checkpoint, images, iterations, seed = key
    return BenchmarkRow(study, policy, defense, attack, checkpoint, int(images), int(iterations), int(seed),
                        rename_legacy(json.loads(summary), LEGACY_SUMMARY_KEYS),
                        tuple(rename_legacy(d, LEGACY_IMAGE_KEYS) for d in json.loads(per_image)),
                        float(seconds), created)


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    """Check that `db` is ours (or empty), switch to WAL, and bring the schema up to date."""
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
    if meta.get("format") != FORMAT or not str(meta.get("schema", "")).isdigit():
        raise ValueError(f"{path} is an SQLite database but not an ats results database "
                         f"(meta {meta!r}); give another --db")
    version = int(meta["schema"])
    if version > SCHEMA_VERSION:
        raise ValueError(f"results database {path} has schema {version}, newer than this ats understands "
                         f"({SCHEMA_VERSION}); upgrade ats or give another --db")
    db.execute("PRAGMA journal_mode = WAL")
    if version < SCHEMA_VERSION:
        with db:
            db.execute("BEGIN IMMEDIATE")
            version = int(db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()[0])
            for step in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step]:
                    db.execute(statement)
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (str(max(version, SCHEMA_VERSION)),))
