"""On-disk queue of events the broker has not acknowledged yet (SQLite, standard library).

Why SQLite rather than a hand-written append-only file: every change is one
atomic transaction, so a ``kill -9`` or a power cut in the middle of a write
leaves either the old or the new content, never a torn line to repair. The
database runs in WAL mode with ``synchronous=NORMAL``: a committed event
survives the daemon being killed at any point; after a power cut the last
commits before it may be missing but the file stays consistent. That trades
one fsync per event (slow and wearing on SD cards) for a small window on power
loss, which suits events that arrive a few times a second at most.

A file that is not a readable database (disk trouble, a stray file) is moved
aside with a warning and a fresh queue started, so the daemon keeps running.

The journal is used from one thread at a time (the MQTT sink's sender thread,
then ``stop()`` after that thread ended); it does no locking of its own.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    key INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class StoredEvent:
    key: int  # rises with each event; the delivery order
    topic: str  # relative topic, e.g. "events"
    payload: bytes
    qos: int


class EventJournal:
    """Events keyed by a rising integer; ``add`` and ``remove`` commit together in ``apply``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._open(path)
        except sqlite3.DatabaseError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            log.warning("event queue %s is unreadable (%s); moved it to %s and started an empty queue", path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = path.with_name(path.name + suffix)
                if src.exists():
                    src.replace(aside.with_name(aside.name + suffix))
            self._db = self._open(path)

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        # check_same_thread=False: the sender thread uses it, then stop() on the caller's thread, never both at once.
        db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            db.execute("SELECT count(*) FROM events").fetchone()
            (ok,) = db.execute("PRAGMA quick_check").fetchone()
            if ok != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {ok}")
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def load(self) -> list[StoredEvent]:
        """All stored events, oldest first."""
        rows = self._db.execute("SELECT key, topic, payload, qos FROM events ORDER BY key").fetchall()
        return [StoredEvent(int(k), str(t), bytes(p), int(q)) for k, t, p, q in rows]

    def apply(self, add: Iterable[StoredEvent] = (), remove: Iterable[int] = ()) -> None:
        """Store ``add`` and forget the keys in ``remove`` in one transaction (removing absent keys is fine)."""
        add = list(add)
        remove = list(remove)
        if not add and not remove:
            return
        with self._db:  # isolation_level=None + context manager: BEGIN … COMMIT, ROLLBACK on error
            self._db.execute("BEGIN")
            if add:
                self._db.executemany(
                    "INSERT OR REPLACE INTO events (key, topic, payload, qos) VALUES (?, ?, ?, ?)",
                    [(e.key, e.topic, e.payload, e.qos) for e in add],
                )
            if remove:
                self._db.executemany("DELETE FROM events WHERE key = ?", [(k,) for k in remove])

    def count(self) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM events").fetchone()
        return int(n)

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error as exc:
            log.debug("closing %s: %s", self.path, exc)
