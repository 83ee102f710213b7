"""Versioned, idempotent schema migrations, safe to run twice or from two processes at once.

Everything lives in the project's own schema (lib/db/names.py). Each migration runs once, in order, inside one
transaction that holds a cluster-wide advisory lock, and is recorded in ``{schema}.schema_migrations``; a
second process waits for the lock and then finds nothing left to do. A schema that is already up to date is
recognised by a read-only query, so workers may run as a role without DDL rights once an owner ran
``embed-assets migrate``. An install from before the schema existed (tables in ``public``) is moved into the
schema first, table by table with ALTER ... SET SCHEMA (metadata only: no row is copied or lost).
Vectors of several models, of any dimensions, live in one table partitioned by model (migration 8,
lib/models/registry.py); the registry of models and the active one are rows here, so every process agrees.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql

from embed_assets.lib.db.connection import first_line
from embed_assets.lib.db.names import forget, names, q, schema_name
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.settings import DEFAULT_SCHEMA, load_settings

# pg_advisory_xact_lock key: a constant of our own ("embedasm" in ASCII).
MIGRATION_LOCK = 0x656D626564_61736D & 0x7FFFFFFFFFFFFFFF


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[[psycopg.Connection, int], None]


def _x(conn: psycopg.Connection, template: str, params: object = None) -> None:
    conn.execute(q(conn, template), params)


def _source_tables(conn: psycopg.Connection, dim: int) -> None:
    _x(
        conn,
        """
        CREATE TABLE {s}.recordings (
            recording_id  text PRIMARY KEY,
            title         text,
            started_at    timestamptz,
            content_hash  text NOT NULL,
            segment_count integer NOT NULL,
            created_at    timestamptz NOT NULL DEFAULT now(),
            updated_at    timestamptz NOT NULL DEFAULT now()
        )""",
    )
    _x(conn, "CREATE INDEX recordings_updated_at_idx ON {s}.recordings (updated_at, recording_id)")
    _x(
        conn,
        """
        CREATE TABLE {s}.transcript_segments (
            recording_id text NOT NULL REFERENCES {s}.recordings (recording_id) ON DELETE CASCADE,
            seq          integer NOT NULL,
            speaker      text NOT NULL,
            start_s      double precision,
            end_s        double precision,
            text         text NOT NULL,
            PRIMARY KEY (recording_id, seq)
        )""",
    )


def _chunk_tables(conn: psycopg.Connection, dim: int) -> None:
    # Chunk plans, written by the transcript_chunks asset. One row per chunk of a recording, per model
    # (the tokenizer, hence the boundaries, depend on the model).
    _x(
        conn,
        """
        CREATE TABLE {s}.chunks (
            recording_id text NOT NULL REFERENCES {s}.recordings (recording_id) ON DELETE CASCADE,
            model        text NOT NULL,
            chunk_index  integer NOT NULL,
            content      text NOT NULL,
            first_seq    integer NOT NULL,
            last_seq     integer NOT NULL,
            start_s      double precision,
            end_s        double precision,
            speakers     text[] NOT NULL,
            token_count  integer NOT NULL,
            content_hash text NOT NULL,
            PRIMARY KEY (recording_id, model, chunk_index)
        )""",
    )
    _x(
        conn,
        """
        CREATE TABLE {s}.chunk_plans (
            recording_id text NOT NULL REFERENCES {s}.recordings (recording_id) ON DELETE CASCADE,
            model        text NOT NULL,
            source_hash  text NOT NULL,
            chunk_count  integer NOT NULL,
            chunker      text NOT NULL,
            chunked_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (recording_id, model)
        )""",
    )


_VIEW = """
    CREATE VIEW {s}.transcript_chunks AS
    SELECT c.recording_id, c.chunk_index, c.content, c.first_seq, c.last_seq, c.start_s, c.end_s,
           c.speakers, c.token_count, c.content_hash, c.model, v.embedding, v.embedded_at
    FROM {s}.chunks c
    LEFT JOIN {s}.chunk_vectors v
      ON v.recording_id = c.recording_id AND v.model = c.model
     AND v.chunk_index = c.chunk_index AND v.content_hash = c.content_hash"""


def _vector_tables(conn: psycopg.Connection, dim: int) -> None:
    # Vectors, written by the chunk_embeddings asset. The content hash doubles as the "never pay twice"
    # cache key: (model, content_hash) finds a vector for identical text anywhere in the table.
    conn.execute(
        q(
            conn,
            """
            CREATE TABLE {s}.chunk_vectors (
                recording_id text NOT NULL REFERENCES {s}.recordings (recording_id) ON DELETE CASCADE,
                model        text NOT NULL,
                chunk_index  integer NOT NULL,
                content_hash text NOT NULL,
                embedding    {v}.vector({dim}) NOT NULL,
                embedded_at  timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (recording_id, model, chunk_index)
            )""",
            dim=sql.Literal(dim),
        )
    )
    _x(conn, "CREATE INDEX chunk_vectors_hash_idx ON {s}.chunk_vectors (model, content_hash)")
    _x(
        conn,
        """
        CREATE TABLE {s}.embedded_recordings (
            recording_id text NOT NULL REFERENCES {s}.recordings (recording_id) ON DELETE CASCADE,
            model        text NOT NULL,
            source_hash  text NOT NULL,
            chunk_count  integer NOT NULL,
            embedded_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (recording_id, model)
        )""",
    )
    # The SQL surface users query for RAG (DESIGN.md): a chunk and its vector, joined on the content hash
    # so a vector is never shown beside text it was not computed from.
    _x(conn, _VIEW)


_TOMBSTONE_FUNCTION = """
    CREATE OR REPLACE FUNCTION {s}.embed_assets_recording_deleted() RETURNS trigger
    LANGUAGE plpgsql SET search_path = '' AS $$
    BEGIN
        INSERT INTO {s}.deleted_recordings (recording_id) VALUES (OLD.recording_id);
        RETURN OLD;
    END $$"""


def _automation_tables(conn: psycopg.Connection, dim: int) -> None:
    # Tombstones of deleted recordings, so the sensor finds deletions by cursor instead of a full scan.
    _x(
        conn,
        """
        CREATE TABLE {s}.deleted_recordings (
            id           bigserial PRIMARY KEY,
            recording_id text NOT NULL,
            deleted_at   timestamptz NOT NULL DEFAULT now()
        )""",
    )
    _x(conn, _TOMBSTONE_FUNCTION)
    _x(
        conn,
        """CREATE TRIGGER recordings_deleted AFTER DELETE ON {s}.recordings
           FOR EACH ROW EXECUTE FUNCTION {s}.embed_assets_recording_deleted()""",
    )
    # The last error of each recording that failed (per recording, even inside a many-partition run).
    _x(
        conn,
        """
        CREATE TABLE {s}.recording_errors (
            recording_id text NOT NULL REFERENCES {s}.recordings (recording_id) ON DELETE CASCADE,
            model        text NOT NULL,
            source_hash  text NOT NULL,
            asset        text NOT NULL,
            error        text NOT NULL,
            run_id       text,
            failures     integer NOT NULL DEFAULT 1,
            failed_at    timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (recording_id, model)
        )""",
    )


def _locked_down(conn: psycopg.Connection, dim: int) -> None:
    # An install moved from `public` still has the tombstone function of migration 4 with unqualified names.
    _x(conn, _TOMBSTONE_FUNCTION)
    lock_down(conn)


def _search(conn: psycopg.Connection, dim: int) -> None:
    from embed_assets.lib.search.function import HIT_TYPE, TEXT_CONFIG  # lib/search builds on this module

    # Full text over the chunk text, speaker names included ("Dana: ..."), kept by Postgres itself.
    _x(
        conn,
        f"""ALTER TABLE {{s}}.chunks ADD COLUMN fts tsvector
            GENERATED ALWAYS AS (to_tsvector('{TEXT_CONFIG}'::regconfig, content)) STORED""",
    )
    _x(conn, "CREATE INDEX chunks_fts_idx ON {s}.chunks USING gin (fts)")
    # The model that serves search (embed_search, `embed-assets search`, the health verdict): one row, so every
    # process reads the same answer from the database (lib/models/registry.py).
    _x(
        conn,
        """CREATE TABLE {s}.active_model (
               singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
               model        text NOT NULL,
               dimension    integer NOT NULL,
               activated_at timestamptz NOT NULL DEFAULT now())""",
    )
    _x(
        conn,
        """INSERT INTO {s}.active_model (model, dimension)
           SELECT model, %s FROM {s}.chunk_vectors GROUP BY model ORDER BY count(*) DESC LIMIT 1""",
        (dim,),
    )
    _x(conn, HIT_TYPE)  # embed_search itself is created by migration 8, over the model registry


def _sources(conn: psycopg.Connection, dim: int) -> None:
    # A source row that cannot be read (lib/sources/formats.py) fails its recording like any error; flagged so
    # `status` and the checks can count unreadable rows apart from other failures.
    _x(conn, "ALTER TABLE {s}.recording_errors ADD COLUMN unreadable boolean NOT NULL DEFAULT false")
    # Where a recording's transcript is: NULL, the project's transcript_segments (`load`, `sample`); 'source', the
    # user's tables (EMBED_SOURCE). A source pass adds and removes only its own rows, so recordings loaded from
    # files before a source was configured keep their vectors and keep working.
    _x(conn, "ALTER TABLE {s}.recordings ADD COLUMN origin text")
    # Vectors already paid for, adopted from another table (`embed-assets adopt`): looked up by (model, hash of
    # the chunk text) before anything is sent to the provider. No dimension on the column: one cache serves
    # every model, and no ANN index: it is only ever read by key.
    _x(
        conn,
        """CREATE TABLE {s}.vector_cache (
               model        text NOT NULL,
               content_hash text NOT NULL,
               embedding    {v}.vector NOT NULL,
               origin       text NOT NULL,
               adopted_at   timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (model, content_hash))""",
    )


def _models(conn: psycopg.Connection, dim: int) -> None:
    """chunk_vectors becomes a table partitioned by model, one partition (dimension check, ANN index) per
    registered model. The existing table becomes its main model's partition as it is: no row is copied (only rows
    of other models, which the configuration check refused before, move to partitions of their own). Its ANN index
    is rebuilt once with the same strategy, over an expression cast to the dimension (the column itself has none)."""
    from embed_assets.lib.indexes import STRATEGIES, build_index, default_strategy
    from embed_assets.lib.models.registry import add_partition, insert_row, registered, set_active
    from embed_assets.lib.models.specs import spec_for_model_id

    _x(
        conn,
        """CREATE TABLE {s}.models (
               model           text PRIMARY KEY,
               provider        text NOT NULL,
               name            text NOT NULL,
               dimension       integer NOT NULL CHECK (dimension > 0),
               vectors         text NOT NULL UNIQUE,
               chunk_tokenizer text NOT NULL,
               registered_at   timestamptz NOT NULL DEFAULT now())""",
    )
    legacy_dim = vector_dimension(conn) or dim
    indexdef = conn.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = 'chunk_vectors_hnsw_idx'",
        (names(conn).schema,),
    ).fetchone()
    legacy_index = next(
        (st for st in STRATEGIES.values() if indexdef and st.opclass.rsplit(".", 1)[-1] in indexdef[0]), None
    )
    counts = conn.execute(
        q(conn, "SELECT model, count(*) FROM {s}.chunk_vectors GROUP BY model ORDER BY count(*) DESC, model")
    ).fetchall()
    active = conn.execute(q(conn, "SELECT model FROM {s}.active_model")).fetchone()
    _x(conn, "DROP VIEW {s}.transcript_chunks")
    _x(conn, "DROP INDEX IF EXISTS {s}.chunk_vectors_hnsw_idx")
    _x(conn, "ALTER TABLE {s}.chunk_vectors RENAME TO chunk_vectors_1")
    _x(conn, "ALTER INDEX {s}.chunk_vectors_pkey RENAME TO chunk_vectors_1_pkey")
    _x(conn, "ALTER INDEX {s}.chunk_vectors_hash_idx RENAME TO chunk_vectors_1_hash_idx")
    _x(
        conn,
        "ALTER TABLE {s}.chunk_vectors_1 RENAME CONSTRAINT chunk_vectors_recording_id_fkey TO chunk_vectors_1_fkey",
    )
    _x(conn, "ALTER TABLE {s}.chunk_vectors_1 ALTER COLUMN embedding TYPE {v}.vector")  # typmod only: no rewrite
    _x(
        conn,
        """CREATE TABLE {s}.chunk_vectors (
               recording_id text NOT NULL REFERENCES {s}.recordings (recording_id) ON DELETE CASCADE,
               model        text NOT NULL,
               chunk_index  integer NOT NULL,
               content_hash text NOT NULL,
               embedding    {v}.vector NOT NULL,
               embedded_at  timestamptz NOT NULL DEFAULT now(),
               PRIMARY KEY (recording_id, model, chunk_index)
           ) PARTITION BY LIST (model)""",
    )
    _x(conn, "CREATE INDEX chunk_vectors_hash_idx ON {s}.chunk_vectors (model, content_hash)")
    if not counts:  # nothing stored yet: the configured model is registered on first use (ensure_models)
        _x(conn, "DROP TABLE {s}.chunk_vectors_1")
        _x(conn, "DELETE FROM {s}.active_model")
    else:
        main = active[0] if active and any(m == active[0] for m, _ in counts) else counts[0][0]
        main_spec = spec_for_model_id(main, legacy_dim)
        insert_row(conn, main_spec, "chunk_vectors_1", main_spec.tokenizer)
        for other, _ in counts:
            if other == main:
                continue
            spec = spec_for_model_id(other, legacy_dim)
            add_partition(conn, spec, spec.tokenizer, None)
            _x(conn, "INSERT INTO {s}.chunk_vectors SELECT * FROM {s}.chunk_vectors_1 WHERE model = %s", (other,))
            _x(conn, "DELETE FROM {s}.chunk_vectors_1 WHERE model = %s", (other,))
        conn.execute(
            q(
                conn,
                "ALTER TABLE {s}.chunk_vectors_1 ADD CONSTRAINT chunk_vectors_1_dimension "
                "CHECK ({v}.vector_dims(embedding) = {dim})",
                dim=sql.Literal(legacy_dim),
            )
        )
        conn.execute(
            q(
                conn,
                "ALTER TABLE {s}.chunk_vectors ATTACH PARTITION {s}.chunk_vectors_1 FOR VALUES IN ({m})",
                m=sql.Literal(main),
            )
        )
        build_index(conn, "chunk_vectors_1", (legacy_index or default_strategy(legacy_dim)).name, legacy_dim)
    _x(conn, _VIEW)
    # The active model must be a registered one (a row of models), and a model is dropped only when not active.
    _x(conn, "DELETE FROM {s}.active_model a WHERE NOT EXISTS (SELECT 1 FROM {s}.models m WHERE m.model = a.model)")
    _x(conn, "ALTER TABLE {s}.active_model ADD FOREIGN KEY (model) REFERENCES {s}.models (model)")
    regs = registered(conn)
    if regs:
        set_active(conn, next((r for r in regs if r.active), regs[0]))
    else:
        from embed_assets.lib.search.function import refresh_search_function

        refresh_search_function(conn)


# Every insert of a recording or a model, and every change of a recording's content, takes the next value of one
# sequence: a recording's run key carries it (defs/sensors.py), so a state that comes back (an edit A -> B -> A, a
# recording deleted and loaded again, a model dropped and registered again) is a new key that Dagster launches.
# A trigger, so every writer gets it (`load`, the source registry, SQL by hand); SECURITY DEFINER, so a worker
# role needs no privilege on the sequence.
_GENERATION_FUNCTION = """
    CREATE OR REPLACE FUNCTION {s}.embed_assets_next_generation() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
    BEGIN
        NEW.generation := nextval('{s}.generations');
        RETURN NEW;
    END $$"""


def _generations(conn: psycopg.Connection, dim: int) -> None:
    _x(conn, "CREATE SEQUENCE {s}.generations")
    # Existing rows keep 0 (no table rewrite); their next change or re-insert takes a fresh value.
    for table in ("recordings", "models"):
        _x(conn, f"ALTER TABLE {{s}}.{table} ADD COLUMN generation bigint NOT NULL DEFAULT 0")
    _x(conn, _GENERATION_FUNCTION)
    for table in ("recordings", "models"):
        _x(
            conn,
            f"""CREATE TRIGGER {table}_generation BEFORE INSERT ON {{s}}.{table}
                FOR EACH ROW EXECUTE FUNCTION {{s}}.embed_assets_next_generation()""",
        )
    _x(
        conn,
        """CREATE TRIGGER recordings_generation_changed BEFORE UPDATE OF content_hash ON {s}.recordings
           FOR EACH ROW WHEN (OLD.content_hash IS DISTINCT FROM NEW.content_hash)
           EXECUTE FUNCTION {s}.embed_assets_next_generation()""",
    )


def _source_guards(conn: psycopg.Connection, dim: int) -> None:
    # The seqs of the segments the chunker read from an external source (EMBED_SOURCE), written when the
    # recording is chunked: the integrity check's coverage reference for recordings whose transcript is not in
    # transcript_segments. NULL: not chunked since this migration (its coverage is checked once it is).
    _x(conn, "ALTER TABLE {s}.recordings ADD COLUMN segment_seqs integer[]")
    # Removals a source pass refused (lib/sources/removal_guard.py): one row per scope while held.
    _x(
        conn,
        """CREATE TABLE {s}.held_removals (
               scope       text PRIMARY KEY,
               ids_digest  text NOT NULL,
               removals    integer NOT NULL,
               known       integer NOT NULL,
               bound       integer NOT NULL,
               examples    text[] NOT NULL,
               held_since  timestamptz NOT NULL DEFAULT now(),
               checked_at  timestamptz NOT NULL DEFAULT now())""",
    )


def _paid_once(conn: psycopg.Connection, dim: int) -> None:
    """Vectors the provider answered are kept before the indexed write (lib/vector_cache.py): a cache row with an
    ``expires_at`` was bought (or belonged to a removed recording) and goes when a write uses it or when it expires;
    adopted rows have none and stay. Every billed provider response is a row of provider_usage, so spend figures
    count what was paid for, not vectors copied or reused."""
    _x(conn, "ALTER TABLE {s}.vector_cache ADD COLUMN expires_at timestamptz")
    _x(conn, "CREATE INDEX vector_cache_expires_idx ON {s}.vector_cache (expires_at) WHERE expires_at IS NOT NULL")
    _x(
        conn,
        """CREATE TABLE {s}.provider_usage (
               id        bigserial PRIMARY KEY,
               model     text NOT NULL,
               billed_at timestamptz NOT NULL DEFAULT now(),
               requests  integer NOT NULL,
               inputs    integer NOT NULL,
               tokens    bigint NOT NULL,
               run_id    text)""",
    )
    _x(conn, "CREATE INDEX provider_usage_model_idx ON {s}.provider_usage (model, billed_at)")


# A recording removed by any path (`embed-assets`, the source sync, a DELETE by hand or by a reload script) keeps
# its vectors content-addressed in vector_cache for a grace period, so its return with the same text costs nothing
# (issue 33 item 3). The grace is EMBED_VECTOR_CACHE_DAYS where the project deletes (lib/vector_cache.py sets
# embed_assets.vector_cache_days for its transaction), 7 days for a DELETE by hand. SECURITY DEFINER: a worker or
# an application role that may delete a recording needs no privilege on the cache.
_KEEP_REMOVED_FUNCTION = """
    CREATE OR REPLACE FUNCTION {s}.embed_assets_keep_removed_vectors() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
    BEGIN
        INSERT INTO {s}.vector_cache (model, content_hash, embedding, origin, expires_at)
        SELECT DISTINCT ON (v.model, v.content_hash) v.model, v.content_hash, v.embedding, 'removed',
               now() + make_interval(secs => 86400 * coalesce(
                   nullif(current_setting('embed_assets.vector_cache_days', true), '')::float8, 7))
        FROM {s}.chunk_vectors v WHERE v.recording_id = OLD.recording_id
        ORDER BY v.model, v.content_hash
        ON CONFLICT (model, content_hash) DO UPDATE SET expires_at = greatest(vector_cache.expires_at,
                                                                              EXCLUDED.expires_at)
        WHERE vector_cache.expires_at IS NOT NULL;
        RETURN OLD;
    END $$"""


def _keep_removed_vectors(conn: psycopg.Connection, dim: int) -> None:
    _x(conn, _KEEP_REMOVED_FUNCTION)
    _x(
        conn,
        """CREATE TRIGGER recordings_keep_vectors BEFORE DELETE ON {s}.recordings
           FOR EACH ROW EXECUTE FUNCTION {s}.embed_assets_keep_removed_vectors()""",
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "source tables", _source_tables),
    Migration(2, "chunk tables", _chunk_tables),
    Migration(3, "vector tables and transcript_chunks view", _vector_tables),
    Migration(4, "deletion tombstones and per-recording errors", _automation_tables),
    Migration(5, "own schema: row-level security on, no privileges but the owner's", _locked_down),
    Migration(6, "hybrid search: full-text column and index, active model, embed_search()", _search),
    Migration(7, "user-defined sources: unreadable rows flagged; adopted vector cache", _sources),
    Migration(8, "several models: a registry, vectors partitioned by model, embed_search over the active one", _models),
    Migration(9, "run keys: a generation per recording and model, bumped by every change and re-insert", _generations),
    Migration(10, "paid once: bought vectors kept before the indexed write, billed usage per call", _paid_once),
    Migration(11, "segment seqs a source recording was chunked from; removals held by the guard", _source_guards),
    Migration(12, "a removed recording's vectors kept in the vector cache, whatever deletes it", _keep_removed_vectors),
)
LATEST = MIGRATIONS[-1].version

# Every object of ours that an install from before the schema existed keeps in `public`.
_LEGACY_TABLES = (
    "recordings",
    "transcript_segments",
    "chunks",
    "chunk_plans",
    "chunk_vectors",
    "embedded_recordings",
    "deleted_recordings",
    "recording_errors",
    "schema_migrations",
)


def lock_down(conn: psycopg.Connection) -> None:
    """No role but the owner (and the roles granted through ``embed-assets grant``) reaches anything here:
    row-level security on every table (and views that run as the caller), so a role that is handed table
    privileges by someone's default privileges (Supabase grants `anon` and `authenticated` everything new in
    `public`, and a user may expose this schema later) still reads zero rows; and every privilege held by
    another role is revoked. Writers under row security cannot COPY: lib/db/rows.py switches to INSERTs."""
    schema = names(conn).schema
    for name, kind in conn.execute(_OWN_RELATIONS, (schema,)).fetchall():
        if kind == "v":  # a view reads its tables as the view's owner unless it runs as the caller
            conn.execute(sql.SQL("ALTER VIEW {} SET (security_invoker = true)").format(sql.Identifier(schema, name)))
        else:
            conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(sql.Identifier(schema, name)))
    for kind, ident, grantee in conn.execute(q(conn, _FOREIGN_GRANTS), {"schema": schema}).fetchall():
        target = sql.SQL("FUNCTION {}").format(sql.SQL(ident)) if kind == "f" else sql.SQL(ident)
        conn.execute(
            sql.SQL("REVOKE ALL ON {} FROM {}").format(
                target, sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee)
            )
        )


_OWN_RELATIONS = """SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v')"""

# (kind, regclass/regprocedure text, grantee or NULL for PUBLIC) of every privilege not held by the owner.
_FOREIGN_GRANTS = """
    SELECT 'r', c.oid::regclass::text, g.rolname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
         aclexplode(c.relacl) a LEFT JOIN pg_roles g ON g.oid = a.grantee
    WHERE n.nspname = %(schema)s AND a.grantee <> c.relowner
      AND NOT EXISTS (SELECT 1 FROM {s}.role_grants rg WHERE rg.role = g.rolname)
    UNION
    SELECT 'f', p.oid::regprocedure::text, g.rolname
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
         aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a LEFT JOIN pg_roles g ON g.oid = a.grantee
    WHERE n.nspname = %(schema)s AND a.grantee <> p.proowner
      AND NOT EXISTS (SELECT 1 FROM {s}.role_grants rg WHERE rg.role = g.rolname)
"""


def _needs_work(conn: psycopg.Connection, schema: str) -> bool:
    """Read-only: is anything left to apply (or to move out of `public`)?"""
    ledger = conn.execute("SELECT to_regclass(%s)", (f"{schema}.schema_migrations",)).fetchone()[0]
    if ledger is None:
        return True
    done = conn.execute(q(conn, "SELECT coalesce(max(version), 0) FROM {s}.schema_migrations")).fetchone()[0]
    return done < LATEST


def may_create_schema() -> bool:
    """Whether any command may create the project's schema on first use: only on the embedded default (no
    EMBED_DATABASE_URL, default EMBED_SCHEMA). Elsewhere `embed-assets migrate` creates it, so a mistyped
    EMBED_SCHEMA is named instead of silently becoming a new, empty schema that reports "healthy"."""
    settings = load_settings()
    return settings.embedded and settings.schema == DEFAULT_SCHEMA


def migrate(conn: psycopg.Connection, dimension: int, *, create_schema: bool = True) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call (empty when up to date). With
    ``create_schema=False`` a schema that does not exist yet is a ConfigError naming it and the fix."""
    schema = schema_name()
    if not create_schema:
        require_schema(conn, schema)
    try:
        if not _needs_work(conn, schema):
            return []
    except pg_errors.InsufficientPrivilege:
        raise ConfigError(no_access_message(conn, schema)) from None
    try:
        return _migrate(conn, schema, dimension)
    except pg_errors.InsufficientPrivilege as e:
        user = current_role(conn)
        raise ConfigError(
            f"role {user!r} may not change schema {schema!r} ({first_line(e)}). Run `embed-assets migrate` once "
            f"as the schema's owner (a role with CREATE on the database), or have an admin run: "
            f"CREATE SCHEMA IF NOT EXISTS {schema} AUTHORIZATION {user};"
        ) from None


def require_schema(conn: psycopg.Connection, schema: str | None = None) -> None:
    """A ConfigError naming the project's schema and the fix when it does not exist (nor a legacy install)."""
    schema = schema or schema_name()
    exists, legacy, database = conn.execute(
        """SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s),
                  to_regclass('public.schema_migrations') IS NOT NULL, current_database()""",
        (schema,),
    ).fetchone()
    if not exists and not legacy:
        raise ConfigError(
            f"schema {schema!r} does not exist in database {database!r}: if EMBED_SCHEMA is mistyped, fix it; "
            "to install there, run `embed-assets migrate` once (it creates the schema)"
        )


def _migrate(conn: psycopg.Connection, schema: str, dimension: int) -> list[int]:
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        _ensure_pgvector(conn)
        _move_legacy_tables(conn, schema)
        _x(
            conn,
            """CREATE TABLE IF NOT EXISTS {s}.schema_migrations (
                   version integer PRIMARY KEY, name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())""",
        )
        _x(conn, "CREATE TABLE IF NOT EXISTS {s}.role_grants (role text PRIMARY KEY, access text NOT NULL)")
        done = {row[0] for row in conn.execute(q(conn, "SELECT version FROM {s}.schema_migrations"))}
        for m in MIGRATIONS:
            if m.version in done:
                continue
            m.apply(conn, dimension)
            _x(conn, "INSERT INTO {s}.schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name))
            applied.append(m.version)
        if applied:
            lock_down(conn)
            regrant(conn)
    return applied


def regrant(conn: psycopg.Connection) -> None:
    """Roles given access through `embed-assets grant` get the same access to what the migrations just
    created (a worker granted before an upgrade must not find a new table refused)."""
    from embed_assets.lib.db.roles import grant  # roles builds on this module

    for role, access in conn.execute(q(conn, "SELECT role, access FROM {s}.role_grants ORDER BY role")).fetchall():
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None:
            grant(conn, role, access)


def _ensure_pgvector(conn: psycopg.Connection) -> None:
    if names(conn).vector is not None:
        return
    try:
        with conn.transaction():  # a savepoint: a refusal must not abort the migration's transaction
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except pg_errors.InsufficientPrivilege:
        raise ConfigError(
            f"the pgvector extension is not installed and role {current_role(conn)!r} may not create it; an admin "
            "runs CREATE EXTENSION vector; (on Supabase: CREATE EXTENSION vector WITH SCHEMA extensions; or "
            "Database > Extensions in the dashboard)"
        ) from None
    forget(conn)


def _move_legacy_tables(conn: psycopg.Connection, schema: str) -> None:
    """An install from before the schema existed: move its objects from `public`, nothing copied or lost."""
    ours = conn.execute("SELECT to_regclass(%s)", (f"{schema}.schema_migrations",)).fetchone()[0]
    if ours is not None:
        return
    present = conn.execute(
        "SELECT to_regclass('public.schema_migrations') IS NOT NULL AND to_regclass('public.chunk_vectors') IS NOT NULL"
    ).fetchone()[0]
    if (
        not present
        or not conn.execute(
            "SELECT EXISTS (SELECT 1 FROM public.schema_migrations WHERE version = 1 AND name = 'source tables')"
        ).fetchone()[0]
    ):
        return
    target = sql.Identifier(schema)
    for table in _LEGACY_TABLES:
        conn.execute(sql.SQL("ALTER TABLE public.{} SET SCHEMA {}").format(sql.Identifier(table), target))
    conn.execute(sql.SQL("ALTER VIEW public.transcript_chunks SET SCHEMA {}").format(target))
    conn.execute(sql.SQL("ALTER FUNCTION public.embed_assets_recording_deleted() SET SCHEMA {}").format(target))


def schema_version(conn: psycopg.Connection) -> int:
    schema = schema_name()
    if conn.execute("SELECT to_regclass(%s)", (f"{schema}.schema_migrations",)).fetchone()[0] is None:
        return 0
    row = conn.execute(q(conn, "SELECT coalesce(max(version), 0) FROM {s}.schema_migrations")).fetchone()
    return int(row[0]) if row else 0


def vector_dimension(conn: psycopg.Connection) -> int | None:
    """The declared dimension of chunk_vectors.embedding, or None when the table does not exist."""
    row = conn.execute(
        """SELECT a.atttypmod FROM pg_attribute a
           WHERE a.attrelid = to_regclass(%s) AND a.attname = 'embedding'""",
        (f"{schema_name()}.chunk_vectors",),
    ).fetchone()
    return int(row[0]) if row and row[0] and row[0] > 0 else None


def no_access_message(conn: psycopg.Connection, schema: str) -> str:
    user = current_role(conn)
    return (
        f"role {user!r} has no access to schema {schema!r}; its owner runs: embed-assets grant {user} "
        "--access runtime (or point EMBED_DATABASE_URL at the owner role)"
    )


def check_access(conn: psycopg.Connection) -> None:
    """Raise the one-line ConfigError when the current role cannot use the project's schema (if it exists)."""
    schema = schema_name()
    row = conn.execute(
        "SELECT has_schema_privilege(n.oid, 'USAGE') FROM pg_namespace n WHERE n.nspname = %s", (schema,)
    ).fetchone()
    if row is not None and not row[0]:
        raise ConfigError(no_access_message(conn, schema))


def current_role(conn: psycopg.Connection) -> str:
    """The role privileges are checked against (after SET ROLE too, unlike the login user)."""
    return str(conn.execute("SELECT current_user").fetchone()[0])
