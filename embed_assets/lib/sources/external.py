"""The user's own tables, read in place through a source definition. Only SELECTs, on connections that read.

Every query wraps the user's SQL as a subquery (``SELECT ... FROM (<query>) src WHERE ...``): Postgres
flattens a plain subquery, so a filter on ``src.recording_id`` or ``src.updated_at`` uses the source table's
index. A recording's content hash is computed by the source server (sha256 of the transcript value, or of its
turn rows in seq order), so a reconcile pass moves hashes, not transcripts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from embed_assets.lib.db.connection import connect, first_line, redact_url
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.sources.definition import SourceDefinition
from embed_assets.lib.sources.formats import segments_from_rows, segments_from_value, unreadable
from embed_assets.lib.transcripts import Segment

BATCH = 1000  # ids per hash/metadata query

# sha256 of a value's text form, or of a recording's turn rows in seq order (fields separated by \x1f, rows by
# \x1e): computed where the data is. NULL stays distinguishable from the empty string.
_VALUE_HASH = "coalesce(encode(sha256(convert_to(src.transcript::text, 'UTF8')), 'hex'), 'null')"
_ROWS_HASH = """encode(sha256(convert_to(string_agg(concat_ws(chr(31), src.seq, src.speaker, src.start_s, src.end_s,
                src.text), chr(30) ORDER BY src.seq), 'UTF8')), 'hex')"""


@dataclass(frozen=True)
class SourceRow:
    """One recording's row in the source: what the registry keeps (lib/sources/registry.py)."""

    recording_id: str
    title: str | None
    started_at: datetime | None
    updated_at: datetime | None
    content_hash: str  # of the transcript as stored, combined with how it is parsed


@dataclass(frozen=True)
class FetchedRecording:
    meta: SourceRow
    value: Any  # the transcript value, or the list of turn rows


class ExternalSource:
    def __init__(self, definition: SourceDefinition, store_url: str) -> None:
        self.definition = definition
        self._url = definition.database_url or store_url
        self.same_database = definition.database_url is None
        self._columns: set[str] | None = None
        self._turn_times: dict[str, bool] = {}

    # -- where -----------------------------------------------------------------------------------------------
    def describe(self) -> str:
        """For status, metadata and logs: the name, the file and the URL with its password masked."""
        where = "the vector store's database" if self.same_database else redact_url(self._url)
        return f"{self.definition.name} ({self.definition.path}; {where})"

    def connect(self) -> psycopg.Connection:
        return connect(
            self._url, setting=f"database_url in {self.definition.path}", application_name="embed_assets source"
        )

    # -- queries ---------------------------------------------------------------------------------------------
    def _wrap(self, template: str, query: str, **parts: sql.Composable) -> sql.Composed:
        # The user's SQL is text of their own file; a literal % in it must not read as a parameter.
        return sql.SQL(template).format(query=sql.SQL(query.replace("%", "%%")), **parts)

    def _run(self, conn: psycopg.Connection, what: str, query: sql.Composed, params: Any = None) -> list[tuple]:
        try:
            return conn.execute(query, params).fetchall()
        except psycopg.errors.InsufficientPrivilege as e:
            raise self._refused(what, e) from None
        except (psycopg.errors.SyntaxError, psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn,
                psycopg.errors.DataError, psycopg.errors.UndefinedFunction) as e:  # fmt: skip
            raise self._query_problem(what, e) from None

    def _refused(self, what: str, e: BaseException) -> ConfigError:
        return ConfigError(
            f"source {self.definition.name}: the {what} was refused ({first_line(e)}); grant SELECT on the "
            f"tables it reads to the role in database_url of {self.definition.path}"
        )

    def _query_problem(self, what: str, e: BaseException) -> ConfigError:
        d = self.definition
        return ConfigError(f"source {d.name}: the {what} fails: {first_line(e)}; fix it in {d.path}")

    def validate(self, conn: psycopg.Connection) -> set[str]:
        """Run each query with no rows wanted and check its columns; the recordings query's columns."""
        if self._columns is not None:
            return self._columns
        d = self.definition
        got = self._column_names(conn, "recordings query", d.recordings_sql)
        if "recording_id" not in got:
            raise ConfigError(
                f"source {d.name}: the recordings query has no recording_id column (it has {', '.join(sorted(got))}); "
                f"alias the id, e.g. SELECT id AS recording_id, ... in {d.path}"
            )
        if d.turns_sql:
            need, query = {"recording_id", "seq", "speaker", "text"}, d.turns_sql
        else:
            need, query = {"recording_id", "transcript"}, d.transcripts_sql or ""
        have = self._column_names(conn, d.reads, query)
        if missing := sorted(need - have):
            raise ConfigError(
                f"source {d.name}: the {d.reads} lacks column(s) {', '.join(missing)} "
                f"(it has {', '.join(sorted(have))}); alias them in {d.path}"
            )
        self._turn_times = {c: c in have for c in ("start_s", "end_s")}
        self._columns = got
        return got

    def _column_names(self, conn: psycopg.Connection, what: str, query: str) -> set[str]:
        cur = conn.cursor()
        try:
            cur.execute(self._wrap("SELECT * FROM ({query}) src LIMIT 0", query))
        except psycopg.errors.InsufficientPrivilege as e:
            raise self._refused(what, e) from None
        except psycopg.Error as e:
            if isinstance(e, psycopg.OperationalError):
                raise
            raise self._query_problem(what, e) from None
        return {c.name for c in cur.description or ()}

    @property
    def has_updated_at(self) -> bool:
        return self._columns is not None and "updated_at" in self._columns

    def _meta_columns(self) -> sql.Composed:
        cols = self._columns or set()
        opt = [
            sql.SQL("src.{}::{}").format(sql.Identifier(c), sql.SQL(t))
            if c in cols
            else sql.SQL("NULL::{}").format(sql.SQL(t))
            for c, t in (("title", "text"), ("started_at", "timestamptz"), ("updated_at", "timestamptz"))
        ]
        return sql.SQL("src.recording_id::text, ") + sql.SQL(", ").join(opt)

    def ids(self, conn: psycopg.Connection) -> set[str]:
        self.validate(conn)
        query = self._wrap("SELECT src.recording_id::text FROM ({query}) src", self.definition.recordings_sql)
        rows = self._run(conn, "recordings query", query)
        return {r[0] for r in rows if r[0] is not None}

    def ids_fingerprint(self, conn: psycopg.Connection) -> list[int]:
        """[row count, sum of a 60-bit hash of each id], computed by the source server: one row crosses the wire.
        Equal fingerprints: the same ids as when it was taken (a changed set colliding has odds of 2**-60)."""
        self.validate(conn)
        query = self._wrap(
            """SELECT count(*), coalesce(sum(('x' || substr(md5(src.recording_id::text), 1, 15))::bit(60)::bigint), 0)
               FROM ({query}) src WHERE src.recording_id IS NOT NULL""",
            self.definition.recordings_sql,
        )
        count, total = self._run(conn, "recordings query", query)[0]
        return [int(count), int(total)]

    def now(self, conn: psycopg.Connection) -> datetime:
        return conn.execute("SELECT now()").fetchone()[0]

    def changed_since(
        self, conn: psycopg.Connection, after: tuple[datetime, str] | None, until: datetime, limit: int
    ) -> list[tuple[datetime, str]]:
        """(updated_at, recording_id) of rows after the cursor and at or before ``until``, oldest first."""
        self.validate(conn)
        since, last = after or (datetime(1970, 1, 1).astimezone(), "")
        rows = self._run(
            conn,
            "recordings query",
            self._wrap(
                """SELECT src.updated_at::timestamptz, src.recording_id::text FROM ({query}) src
                   WHERE (src.updated_at::timestamptz, src.recording_id::text) > (%(since)s, %(id)s)
                     AND src.updated_at::timestamptz <= %(until)s
                   ORDER BY 1, 2 LIMIT %(limit)s""",
                self.definition.recordings_sql,
            ),
            {"since": since, "id": last, "until": until, "limit": limit},
        )
        return [(r[0], r[1]) for r in rows if r[0] is not None and r[1] is not None]

    def latest(self, conn: psycopg.Connection, until: datetime) -> tuple[datetime, str] | None:
        """The newest (updated_at, recording_id) at or before ``until``: where a full pass leaves the cursor."""
        rows = self._run(
            conn,
            "recordings query",
            self._wrap(
                """SELECT src.updated_at::timestamptz, src.recording_id::text FROM ({query}) src
                   WHERE src.updated_at::timestamptz <= %s ORDER BY 1 DESC, 2 DESC LIMIT 1""",
                self.definition.recordings_sql,
            ),
            (until,),
        )
        return (rows[0][0], rows[0][1]) if rows else None

    def recordings(self, conn: psycopg.Connection, ids: list[str]) -> list[SourceRow]:
        """Metadata and content hash of ``ids`` (those still in the source), in batches."""
        self.validate(conn)
        out: list[SourceRow] = []
        for i in range(0, len(ids), BATCH):
            part = ids[i : i + BATCH]
            meta = {
                r[0]: r
                for r in self._run(
                    conn,
                    "recordings query",
                    self._wrap(
                        "SELECT {cols} FROM ({query}) src WHERE src.recording_id::text = ANY(%s)",
                        self.definition.recordings_sql,
                        cols=self._meta_columns(),
                    ),
                    (part,),
                )
            }
            hashes = self._hashes(conn, part)
            out.extend(self._meta(meta[k], hashes.get(k)) for k in part if k in meta)
        return out

    def _hashes(self, conn: psycopg.Connection, ids: list[str]) -> dict[str, str]:
        d = self.definition
        if d.turns_sql:
            template = """SELECT src.recording_id::text, {hash} FROM ({query}) src
                          WHERE src.recording_id::text = ANY(%s) GROUP BY 1"""
        else:
            template = "SELECT src.recording_id::text, {hash} FROM ({query}) src WHERE src.recording_id::text = ANY(%s)"
        digest = sql.SQL(_ROWS_HASH if d.turns_sql else _VALUE_HASH)
        query = self._wrap(template, d.turns_sql or d.transcripts_sql or "", hash=digest)
        return dict(self._run(conn, d.reads, query, (ids,)))

    def _meta(self, row: tuple, raw_hash: str | None) -> SourceRow:
        # No transcript row at all hashes as "missing": the recording is registered and fails on its own turn.
        digest = hashlib.sha256(f"{self.definition.parse_digest}:{raw_hash or 'missing'}".encode()).hexdigest()
        return SourceRow(row[0], row[1], row[2], row[3], digest)

    def fetch(self, conn: psycopg.Connection, recording_id: str) -> FetchedRecording | None:
        """One recording's metadata, hash and transcript, read in one snapshot; None when not in the source."""
        self.validate(conn)
        d = self.definition
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            meta = self._run(
                conn,
                "recordings query",
                self._wrap(
                    "SELECT {cols} FROM ({query}) src WHERE src.recording_id::text = %s",
                    d.recordings_sql,
                    cols=self._meta_columns(),
                ),
                (recording_id,),
            )
            if not meta:
                return None
            raw_hash = self._hashes(conn, [recording_id]).get(recording_id)
            if d.turns_sql:
                times = [
                    sql.SQL("src.{}").format(sql.Identifier(c)) if self._turn_times[c] else sql.SQL("NULL")
                    for c in ("start_s", "end_s")
                ]
                value: Any = self._run(
                    conn,
                    d.reads,
                    self._wrap(
                        "SELECT src.seq, src.speaker::text, {start}, {end}, src.text FROM ({query}) src"
                        " WHERE src.recording_id::text = %s ORDER BY src.seq",
                        d.turns_sql,
                        start=times[0],
                        end=times[1],
                    ),
                    (recording_id,),
                )
            else:
                rows = self._run(
                    conn,
                    d.reads,
                    self._wrap(
                        "SELECT src.transcript FROM ({query}) src WHERE src.recording_id::text = %s",
                        d.transcripts_sql or "",
                    ),
                    (recording_id,),
                )
                if len(rows) > 1:
                    value = _Duplicate(len(rows))
                else:
                    value = rows[0][0] if rows else _MISSING
        return FetchedRecording(self._meta(meta[0], raw_hash), value)

    def segments(self, fetched: FetchedRecording) -> tuple[Segment, ...]:
        """Parse a fetched recording; raises UnreadableSourceRow naming the row and the fix."""
        d, rid, value = self.definition, fetched.meta.recording_id, fetched.value
        if value is _MISSING:
            raise unreadable(d, rid, "no transcript row for this recording")
        if isinstance(value, _Duplicate):
            raise unreadable(d, rid, f"{value.n} transcript rows for one recording; the query must yield one")
        if d.turns_sql:
            return segments_from_rows(d, rid, value)
        return segments_from_value(d, rid, value)


class _Missing:
    pass


_MISSING = _Missing()


@dataclass(frozen=True)
class _Duplicate:
    n: int
