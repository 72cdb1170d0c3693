"""On-disk queue of events the broker has not acknowledged yet (SQLite, standard library), and where it lives.

With ``mqtt.persist`` the queue is ``{state_dir}/mqtt-events.sqlite3``
(:func:`journal_file`) and the envelope's ``seq`` counters are kept next to it
(:func:`sequence_file`), so that numbers keep rising across restarts.

Why SQLite rather than a hand-written append-only file: every change is one
atomic transaction, so a ``kill -9`` or a power cut in the middle of a write
leaves either the old or the new content, never a torn line to repair. The
database runs in WAL mode with ``synchronous=NORMAL``: a committed event
survives the daemon being killed at any point; after a power cut the last
commits before it may be missing but the file stays consistent. That trades
one fsync per event (slow and wearing on SD cards) for a small window on power
loss, which suits events that arrive a few times a second at most.

A file that is not a readable database (disk trouble, a stray file) is moved
aside with a warning and a fresh queue started, so the daemon keeps running;
every event that can still be read from the damaged file is carried over
(:func:`salvage_rows` steps around damaged pages). Every stored event is
checked before it is handed out (:func:`payload_problem`): a damaged payload
is dropped with a warning rather than published. A 0-byte file where a queue
was expected (events lost to a full disk or a bad copy) is reported too.

The journal is used from one thread at a time (the MQTT sink's sender thread,
then ``stop()`` after that thread ended); it does no locking of its own.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge.settings import ConfigError, MqttSettings

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    key INTEGER PRIMARY KEY,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL
)
"""


Row = tuple[int, str, bytes, int]
_MAX_KEY = 2**63 - 1  # SQLite's largest rowid


def sequence_file(settings: MqttSettings) -> Path | None:
    """Where the Envelope should keep its ``seq`` counters: in ``state_dir`` when events persist, else None.

    Persisted events outlive the daemon; their ``seq`` must keep rising across
    restarts too, or subscribers would see old numbers again.
    """
    return settings.state_dir / "sequence.json" if settings.persist else None


def journal_file(settings: MqttSettings) -> Path:
    return settings.state_dir / "mqtt-events.sqlite3"


def payload_problem(topic: str, payload: bytes, qos: int) -> str | None:
    """Why a stored event is damaged, or None when it is what the sink stored.

    The sink stores UTF-8 text (a JSON object for every enveloped message);
    a torn page reads back as NUL bytes or broken text, never as valid JSON.
    """
    if not topic or qos not in (0, 1, 2):
        return "bad topic or QoS"
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "payload is not UTF-8"
    if "\0" in text:
        return "payload holds NUL bytes"
    if text[:1] in ("{", "["):  # every enveloped message: a torn one no longer parses
        try:
            json.loads(text)
        except ValueError:
            return "payload is not valid JSON"
    return None


def salvage_rows(probe: Callable[[int], Row | None]) -> list[Row]:
    """Every row ``probe`` can still read, in key order, stepping around the keys whose lookup fails.

    ``probe(k)`` returns the row with the smallest key >= k (None past the
    last) or raises ``sqlite3.DatabaseError`` when the lookup meets a damaged
    page. After a failure the search gallops forward (k+1, k+2, k+4, …) to the
    first lookup that works, then bisects back to the first key past the
    damage, so a damaged leaf costs only the events on it. A damaged page
    high in the tree hides everything below it; those events are not readable.
    """
    rows: list[Row] = []
    key = -_MAX_KEY
    while key <= _MAX_KEY:
        try:
            row = probe(key)
        except sqlite3.DatabaseError:
            row, key = _past_damage(probe, key)
            if key > _MAX_KEY:
                break
        if row is None:
            break
        rows.append(row)
        key = row[0] + 1
    return rows


def _past_damage(probe: Callable[[int], Row | None], bad: int) -> tuple[Row | None, int]:
    """From a failing key ``bad``: the first row whose lookup works again and the key it was found at."""
    step = 1
    while True:
        if bad >= _MAX_KEY:
            return None, _MAX_KEY + 1
        good = min(bad + step, _MAX_KEY)
        try:
            row = probe(good)
            break
        except sqlite3.DatabaseError:
            bad, step = good, step * 2
    while good - bad > 1:  # the lookups in (bad, good) may reach rows just past the damage
        mid = (bad + good) // 2
        try:
            row, good = probe(mid), mid
        except sqlite3.DatabaseError:
            bad = mid
    return row, good


@dataclass(frozen=True)
class StoredEvent:
    key: int  # rises with each event; the delivery order
    topic: str  # relative topic, e.g. "events"
    payload: bytes
    qos: int


def highest_seqs(stored: list[StoredEvent]) -> dict[str, int]:
    """Relative topic -> the highest envelope ``seq`` among the stored events (payloads without one are passed over)."""
    out: dict[str, int] = {}
    for event in stored:
        try:
            body = json.loads(event.payload)
        except ValueError:
            continue
        seq = body.get("seq") if isinstance(body, dict) else None
        if isinstance(seq, int) and seq > out.get(event.topic, 0):
            out[event.topic] = seq
    return out


class EventJournal:
    """Events keyed by a rising integer; ``add`` and ``remove`` commit together in ``apply``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_file() and path.stat().st_size == 0:
            # SQLite would quietly treat it as a new database; a queue file is never empty once written.
            log.warning(
                "event queue %s is an empty (0-byte) file; the events it held are lost "
                "(a full disk or an interrupted copy?); starting an empty queue", path,
            )
        try:
            self._db = self._open(path)
        except sqlite3.DatabaseError as exc:
            rescued = _salvage(path)
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                src = path.with_name(path.name + suffix)
                if src.exists():
                    src.replace(aside.with_name(aside.name + suffix))
            self._db = self._open(path)
            if rescued:
                self.apply(add=[StoredEvent(*row) for row in rescued])
            log.warning(
                "event queue %s is damaged (%s); recovered %d events from it, moved it to %s and continue with those",
                path, exc, len(rescued), aside,
            )

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
        """All intact stored events, oldest first; damaged ones are removed with a warning."""
        rows = self._db.execute("SELECT key, topic, payload, qos FROM events ORDER BY key").fetchall()
        events, damaged = [], []
        for k, t, p, q in rows:
            event = StoredEvent(int(k), str(t), bytes(p), int(q))
            problem = payload_problem(event.topic, event.payload, event.qos)
            if problem is None:
                events.append(event)
            else:
                damaged.append((event.key, problem))
        if damaged:
            log.warning(
                "event queue %s: %d stored events are damaged and are dropped, not sent (first: key %d, %s)",
                self.path, len(damaged), damaged[0][0], damaged[0][1],
            )
            self.apply(remove=[k for k, _ in damaged])
        return events

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

    def store(self, add: Iterable[StoredEvent] = (), remove: Iterable[int] = ()) -> str | None:
        """:meth:`apply`, saying what went wrong instead of raising: None, or the sentence for the log.

        A full disk or a card gone must not stop delivery: the sink keeps the
        events in memory then (and acknowledged ones left on disk are merely
        sent again after a restart: at-least-once).
        """
        try:
            self.apply(add, remove)
        except (sqlite3.Error, OSError) as exc:
            return f"cannot write the event queue {self.path} ({exc}); events are kept in memory only"
        return None

    def count(self) -> int:
        (n,) = self._db.execute("SELECT count(*) FROM events").fetchone()
        return int(n)

    def close(self) -> None:
        try:
            self._db.close()
        except sqlite3.Error as exc:
            log.debug("closing %s: %s", self.path, exc)


def open_journal(settings: MqttSettings) -> tuple[EventJournal, list[StoredEvent]]:
    """The journal at :func:`journal_file` and the events it kept; ConfigError when ``state_dir`` is unusable."""
    path = journal_file(settings)
    try:
        journal = EventJournal(path)
        return journal, journal.load()
    except (sqlite3.Error, OSError) as exc:  # a state_dir a person must fix
        raise ConfigError(
            f"mqtt.persist is on but the event queue {path} cannot be opened ({exc}); "
            "set mqtt.state_dir to a writable directory (systemd: StateDirectory=deepfer)"
        ) from None


def _salvage(path: Path) -> list[Row]:
    """The rows still readable from a damaged queue file (its WAL included); [] when none are."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error:
        return []
    query = "SELECT key, topic, payload, qos FROM events WHERE key >= ? ORDER BY key LIMIT 1"

    def probe(key: int) -> Row | None:
        row = db.execute(query, (key,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]), bytes(row[2]), int(row[3]))

    try:
        return salvage_rows(probe)
    except sqlite3.Error:  # no events table at all: the schema page itself is damaged
        return []
    finally:
        db.close()
