"""The user store: albums and ratings, the source of truth for every per-user model.

One interface, two engines: SQLite (the embedded default, one file shared by every replica on a
machine) and PostgreSQL (many machines). Both pass the same contract tests (tests/online).

Guarantees the service builds on:
- `add_ratings` returns only after the transaction committed (SQLite WAL with synchronous=FULL;
  PostgreSQL's synchronous commit), so an acknowledged rating survives a crash;
- re-rating a photo replaces the earlier score; a rating's photo joins the user's album;
- a client request id makes a retried call idempotent: the first acknowledgement is replayed, and
  the same id with a different payload is refused (`RequestIdConflict`);
- writers to one user are serialised (SQLite `BEGIN IMMEDIATE`; PostgreSQL `SELECT ... FOR
  UPDATE` on the user's row), and every change bumps a per-user version, so a cached model can
  tell whether it is older than the store (`versions`).
Every statement is parameterised; ids never reach SQL text.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from serving.online.errors import RequestIdConflict, UnknownUser

DEFAULT_TENANT = "default"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS pam_users (
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        ratings_version BIGINT NOT NULL DEFAULT 0,
        album_version BIGINT NOT NULL DEFAULT 0,
        generation TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, user_id))""",
    """CREATE TABLE IF NOT EXISTS pam_album (
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        image_id TEXT NOT NULL,
        position BIGINT NOT NULL,
        PRIMARY KEY (tenant, user_id, image_id))""",
    """CREATE TABLE IF NOT EXISTS pam_ratings (
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        image_id TEXT NOT NULL,
        score DOUBLE PRECISION NOT NULL,
        seq BIGINT NOT NULL,
        rated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, user_id, image_id))""",
    """CREATE TABLE IF NOT EXISTS pam_requests (
        tenant TEXT NOT NULL,
        user_id TEXT NOT NULL,
        request_id TEXT NOT NULL,
        payload_sha TEXT NOT NULL,
        ratings_version BIGINT NOT NULL,
        n_ratings BIGINT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (tenant, user_id, request_id))""",
)
USER_TABLES = ("pam_requests", "pam_ratings", "pam_album", "pam_users")


@dataclass(frozen=True)
class Versions:
    """Per-user change counters. `generation` is new for each creation of the user id, so a model
    cached before a delete never passes for one of the re-created user."""

    ratings: int
    album: int
    generation: str


@dataclass(frozen=True)
class RatingsAck:
    ratings_version: int
    n_ratings: int  # the user's ratings after this call
    replayed: bool  # True when a retried request id returned the first acknowledgement


@dataclass(frozen=True)
class AlbumAck:
    added: int
    album_size: int
    album_version: int


@dataclass(frozen=True)
class UserSnapshot:
    """A user's whole state read in one transaction (what a model is fit on)."""

    user_id: str
    versions: Versions
    album: list[str]  # insertion order; every rated photo is in it
    rated_ids: list[str]  # rating order (oldest first)
    scores: list[float]
    created_at: float


def payload_digest(ratings: Sequence[tuple[str, float]]) -> str:
    canonical = json.dumps([[image_id, float(score)] for image_id, score in ratings], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class UserStore(ABC):
    """Albums and ratings per (tenant, user). Thread-safe; one instance per process."""

    placeholder = "?"
    url: str

    # -- engine-specific -------------------------------------------------------------------
    @abstractmethod
    @contextmanager
    def _transaction(self, write: bool) -> Iterator[object]:
        """Yield a cursor inside a transaction; commit on success, roll back on error."""

    @abstractmethod
    def _lock_user(self, cur, tenant: str, user_id: str) -> tuple | None:
        """Read (ratings_version, album_version, created_at) of the user, locking it for writing."""

    @abstractmethod
    def close(self) -> None: ...

    # -- helpers ---------------------------------------------------------------------------
    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def _exec(self, cur, statement: str, params: Sequence = ()):
        cur.execute(self._sql(statement), tuple(params))
        return cur

    def _create_schema(self) -> None:
        with self._transaction(write=True) as cur:
            for statement in SCHEMA:
                cur.execute(statement)

    def _ensure_locked(self, cur, tenant: str, user_id: str, create: bool) -> tuple:
        row = self._lock_user(cur, tenant, user_id)
        if row is None:
            if not create:
                raise UnknownUser(user_id)
            self._exec(cur, "INSERT INTO pam_users (tenant, user_id, ratings_version, album_version, generation, "
                       "created_at) VALUES (?, ?, 0, 0, ?, ?) ON CONFLICT (tenant, user_id) DO NOTHING",
                       (tenant, user_id, uuid.uuid4().hex, time.time()))
            row = self._lock_user(cur, tenant, user_id)
        return row

    def _album_size(self, cur, tenant: str, user_id: str) -> int:
        return int(self._exec(cur, "SELECT COUNT(*) FROM pam_album WHERE tenant = ? AND user_id = ?",
                              (tenant, user_id)).fetchone()[0])

    def _append_album(self, cur, tenant: str, user_id: str, image_ids: Sequence[str]) -> int:
        """Insert the ids not yet in the album, in order; returns how many were new."""
        existing = {r[0] for r in self._exec(
            cur, "SELECT image_id FROM pam_album WHERE tenant = ? AND user_id = ?", (tenant, user_id))}
        position = self._album_size(cur, tenant, user_id)
        new = []
        for image_id in dict.fromkeys(image_ids):
            if image_id not in existing:
                new.append((tenant, user_id, image_id, position))
                position += 1
        if new:
            cur.executemany(self._sql("INSERT INTO pam_album (tenant, user_id, image_id, position) "
                                      "VALUES (?, ?, ?, ?)"), new)
        return len(new)

    # -- the interface ---------------------------------------------------------------------
    def create_user(self, user_id: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Create the user if absent; True when it was new."""
        with self._transaction(write=True) as cur:
            existed = self._lock_user(cur, tenant, user_id) is not None
            self._ensure_locked(cur, tenant, user_id, create=True)
        return not existed

    def add_album(self, user_id: str, image_ids: Sequence[str], tenant: str = DEFAULT_TENANT) -> AlbumAck:
        """Register or extend the user's album (the user is created when new)."""
        with self._transaction(write=True) as cur:
            _, album_version, _ = self._ensure_locked(cur, tenant, user_id, create=True)
            added = self._append_album(cur, tenant, user_id, image_ids)
            if added:
                album_version = self._exec(
                    cur, "UPDATE pam_users SET album_version = album_version + 1 "
                    "WHERE tenant = ? AND user_id = ? RETURNING album_version", (tenant, user_id)).fetchone()[0]
            size = self._album_size(cur, tenant, user_id)
        return AlbumAck(added=added, album_size=size, album_version=int(album_version))

    def add_ratings(self, user_id: str, ratings: Sequence[tuple[str, float]], request_id: str | None = None,
                    tenant: str = DEFAULT_TENANT) -> RatingsAck:
        """Store ratings (image_id, score) durably; returns after commit. The user must exist."""
        digest = payload_digest(ratings)
        with self._transaction(write=True) as cur:
            self._ensure_locked(cur, tenant, user_id, create=False)
            if request_id is not None:
                seen = self._exec(cur, "SELECT payload_sha, ratings_version, n_ratings FROM pam_requests "
                                  "WHERE tenant = ? AND user_id = ? AND request_id = ?",
                                  (tenant, user_id, request_id)).fetchone()
                if seen is not None:
                    if seen[0] != digest:
                        raise RequestIdConflict(request_id)
                    return RatingsAck(int(seen[1]), int(seen[2]), replayed=True)
            version = int(self._exec(
                cur, "UPDATE pam_users SET ratings_version = ratings_version + 1 "
                "WHERE tenant = ? AND user_id = ? RETURNING ratings_version", (tenant, user_id)).fetchone()[0])
            now = time.time()
            last = {}
            for image_id, score in ratings:  # a repeated id inside one call: the last score wins
                last[image_id] = float(score)
            cur.executemany(self._sql(
                "INSERT INTO pam_ratings (tenant, user_id, image_id, score, seq, rated_at) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (tenant, user_id, image_id) DO UPDATE SET score = excluded.score, "
                "seq = excluded.seq, rated_at = excluded.rated_at"),
                [(tenant, user_id, image_id, score, version, now) for image_id, score in last.items()])
            if self._append_album(cur, tenant, user_id, list(last)):
                self._exec(cur, "UPDATE pam_users SET album_version = album_version + 1 "
                           "WHERE tenant = ? AND user_id = ?", (tenant, user_id))
            n_ratings = int(self._exec(cur, "SELECT COUNT(*) FROM pam_ratings WHERE tenant = ? AND user_id = ?",
                                       (tenant, user_id)).fetchone()[0])
            if request_id is not None:
                self._exec(cur, "INSERT INTO pam_requests (tenant, user_id, request_id, payload_sha, "
                           "ratings_version, n_ratings, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                           (tenant, user_id, request_id, digest, version, n_ratings, now))
        return RatingsAck(version, n_ratings, replayed=False)

    def import_users(self, users: Mapping[str, Sequence[tuple[str, float]]], tenant: str = DEFAULT_TENANT) -> int:
        """Bulk-load new users with their ratings in one transaction (seeding, migrations,
        benchmarks); rated photos form each album. Existing users are refused."""
        now = time.time()
        with self._transaction(write=True) as cur:
            clash = [u for u in users if self._lock_user(cur, tenant, u) is not None]
            if clash:
                raise ValueError(f"{len(clash)} users exist already, e.g. {clash[0]!r}")
            cur.executemany(self._sql("INSERT INTO pam_users (tenant, user_id, ratings_version, album_version, "
                                      "generation, created_at) VALUES (?, ?, 1, 1, ?, ?)"),
                            [(tenant, u, uuid.uuid4().hex, now) for u in users])
            cur.executemany(self._sql("INSERT INTO pam_ratings (tenant, user_id, image_id, score, seq, rated_at) "
                                      "VALUES (?, ?, ?, ?, 1, ?)"),
                            [(tenant, u, i, float(s), now) for u, rs in users.items() for i, s in rs])
            cur.executemany(self._sql("INSERT INTO pam_album (tenant, user_id, image_id, position) VALUES (?, ?, ?, ?)"),
                            [(tenant, u, i, k) for u, rs in users.items() for k, (i, _) in enumerate(rs)])
        return len(users)

    def _user_row(self, cur, tenant: str, user_id: str) -> tuple[Versions, float]:
        """(versions, created_at) of the user; UnknownUser when there is none."""
        row = self._exec(cur, "SELECT ratings_version, album_version, generation, created_at FROM pam_users "
                         "WHERE tenant = ? AND user_id = ?", (tenant, user_id)).fetchone()
        if row is None:
            raise UnknownUser(user_id)
        return Versions(int(row[0]), int(row[1]), row[2]), float(row[3])

    def versions(self, user_id: str, tenant: str = DEFAULT_TENANT) -> Versions:
        """The user's change counters (one indexed read: the hot path's freshness check)."""
        with self._transaction(write=False) as cur:
            return self._user_row(cur, tenant, user_id)[0]

    def snapshot(self, user_id: str, tenant: str = DEFAULT_TENANT) -> UserSnapshot:
        with self._transaction(write=False) as cur:
            versions, created_at = self._user_row(cur, tenant, user_id)
            album = [r[0] for r in self._exec(
                cur, "SELECT image_id FROM pam_album WHERE tenant = ? AND user_id = ? ORDER BY position",
                (tenant, user_id))]
            rated = self._exec(cur, "SELECT image_id, score FROM pam_ratings WHERE tenant = ? AND user_id = ? "
                               "ORDER BY seq, image_id", (tenant, user_id)).fetchall()
        return UserSnapshot(user_id=user_id, versions=versions, album=album, rated_ids=[r[0] for r in rated],
                            scores=[float(r[1]) for r in rated], created_at=created_at)

    def exists(self, user_id: str, tenant: str = DEFAULT_TENANT) -> bool:
        try:
            self.versions(user_id, tenant)
        except UnknownUser:
            return False
        return True

    def delete_user(self, user_id: str, tenant: str = DEFAULT_TENANT) -> bool:
        """Delete the user and everything stored for them; False when there was no such user."""
        with self._transaction(write=True) as cur:
            if self._lock_user(cur, tenant, user_id) is None:
                return False
            for table in USER_TABLES:
                self._exec(cur, f"DELETE FROM {table} WHERE tenant = ? AND user_id = ?", (tenant, user_id))
        return True

    def count_users(self, tenant: str | None = None) -> int:
        with self._transaction(write=False) as cur:
            if tenant is None:
                return int(self._exec(cur, "SELECT COUNT(*) FROM pam_users").fetchone()[0])
            return int(self._exec(cur, "SELECT COUNT(*) FROM pam_users WHERE tenant = ?", (tenant,)).fetchone()[0])

    def ping(self) -> None:
        """Raise when the store cannot answer (readiness)."""
        with self._transaction(write=False) as cur:
            self._exec(cur, "SELECT 1").fetchone()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SQLiteUserStore(UserStore):
    """One SQLite file in WAL mode; safe for several processes on one machine."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{self.path}"
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._create_schema()

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # durable at commit, not just crash-consistent
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_s * 1000)}")
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Cursor]:
        conn = self._connection()
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield cur
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        else:
            cur.execute("COMMIT")
        finally:
            cur.close()

    def _lock_user(self, cur, tenant: str, user_id: str) -> tuple | None:
        # BEGIN IMMEDIATE already holds the database's write lock
        return cur.execute("SELECT ratings_version, album_version, created_at FROM pam_users "
                           "WHERE tenant = ? AND user_id = ?", (tenant, user_id)).fetchone()

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


class PostgresUserStore(UserStore):
    """PostgreSQL through psycopg 3; one connection per thread, reconnecting when broken."""

    placeholder = "%s"

    def __init__(self, url: str, connect_timeout_s: int = 10):
        import psycopg

        self._psycopg = psycopg
        self.url = url
        self._connect_timeout_s = connect_timeout_s
        self._local = threading.local()
        self._all: list = []
        self._all_lock = threading.Lock()
        self._create_schema()

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            # autocommit: each `transaction()` block below is one explicit BEGIN ... COMMIT
            conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=self._connect_timeout_s)
            self._local.conn = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[object]:
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            if not write:  # a snapshot: every statement of the block sees the same commits
                cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield cur

    def _create_schema(self) -> None:
        with self._transaction(write=True) as cur:
            # concurrent replicas may start at once: serialise the CREATEs
            cur.execute("SELECT pg_advisory_xact_lock(7142001)")
            for statement in SCHEMA:
                cur.execute(statement)

    def _lock_user(self, cur, tenant: str, user_id: str) -> tuple | None:
        cur.execute("SELECT ratings_version, album_version, created_at FROM pam_users "
                    "WHERE tenant = %s AND user_id = %s FOR UPDATE", (tenant, user_id))
        return cur.fetchone()

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
        self._local = threading.local()


def open_user_store(url: str | Path) -> UserStore:
    """`sqlite:///path/users.db` (or a plain path) -> SQLite; `postgresql://...` -> PostgreSQL."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresUserStore(text)
    if text.startswith("sqlite:///"):
        return SQLiteUserStore(text[len("sqlite:///"):])
    if "://" in text:
        raise ValueError(f"unsupported user store URL {text!r}: use sqlite:///PATH or postgresql://...")
    return SQLiteUserStore(text)
