"""Schema migrations: the project's own schema, an install from before it moved out of `public` with every
row, a schema name of the user's choice, and a role without DDL rights told what to run."""

from __future__ import annotations

import psycopg
import pytest

from embed_assets.lib.db import names as names_module
from embed_assets.lib.db.connection import register_vector_types
from embed_assets.lib.db.migrations import LATEST, MIGRATIONS, migrate, schema_version
from embed_assets.lib.errors import ConfigError
from embed_assets.lib.pipeline import chunk_recording
from embed_assets.lib.search.query import search
from embed_assets.lib.sources.tables import upsert_transcript
from embed_assets_tests.support.dagster_dev import drop_database, fresh_database
from embed_assets_tests.test_store import PARAMS, SPEC, transcript, vector_for

OURS = ("recordings", "transcript_segments", "chunks", "chunk_plans", "chunk_vectors", "embedded_recordings")


def counts(c: psycopg.Connection, schema: str) -> dict[str, int]:
    return {t: c.execute(f"SELECT count(*) FROM {schema}.{t}").fetchone()[0] for t in OURS}  # noqa: S608


def relations_in(c: psycopg.Connection, schema: str) -> set[str]:
    return {
        r[0]
        for r in c.execute(
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE nspname = %s", (schema,)
        )
    }


@pytest.fixture
def scratch(db_url: str):
    url = fresh_database(db_url, "migration_scratch")
    yield url
    drop_database(db_url, "migration_scratch")


def test_an_install_from_before_the_schema_moves_out_of_public_with_every_row(scratch: str) -> None:
    with psycopg.connect(scratch, autocommit=True) as c:
        # The layout of every install before this change: migrations 1-4 applied in `public`, the ledger
        # there too, and the tombstone trigger function with unqualified names.
        c.execute("CREATE EXTENSION vector")
        names_module._CACHE[c] = names_module.Names("public", "public")
        c.execute(
            "CREATE TABLE public.schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for m in MIGRATIONS[:4]:
            m.apply(c, 384)
            c.execute("INSERT INTO public.schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name))
        c.execute(
            """CREATE OR REPLACE FUNCTION public.embed_assets_recording_deleted() RETURNS trigger
               LANGUAGE plpgsql AS $$
               BEGIN INSERT INTO deleted_recordings (recording_id) VALUES (OLD.recording_id); RETURN OLD; END $$"""
        )
        for rid in ("old-1", "old-2", "old-3"):
            upsert_transcript(c, transcript(rid, 30, variant=rid))
            chunk_recording(c, rid, SPEC, PARAMS)
            register_vector_types(c)
            chunks = c.execute(  # vectors written as the code of that time did
                "SELECT chunk_index, content, content_hash FROM public.chunks WHERE recording_id = %s", (rid,)
            ).fetchall()
            for index, content, content_hash in chunks:
                c.execute(
                    "INSERT INTO public.chunk_vectors (recording_id, model, chunk_index, content_hash, embedding)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (rid, SPEC.model_id, index, content_hash, vector_for(content, 384)),
                )
            c.execute(
                "INSERT INTO public.embedded_recordings (recording_id, model, source_hash, chunk_count)"
                " SELECT recording_id, model, source_hash, chunk_count FROM public.chunk_plans WHERE recording_id = %s",
                (rid,),
            )
        before = counts(c, "public")
        assert before["chunk_vectors"] > 10
    with psycopg.connect(scratch, autocommit=True) as c:
        assert migrate(c, 384) == [m.version for m in MIGRATIONS[4:]]
        assert counts(c, "embed_assets") == before
        assert not relations_in(c, "public") & {*OURS, "schema_migrations", "transcript_chunks"}
        assert schema_version(c) == LATEST
        # The old table is its model's partition now (no row copied), registered and active, with its index.
        from embed_assets.lib.models.registry import coverage

        [model] = coverage(c)
        assert (model.model_id, model.state, model.dimension, model.index) == (SPEC.model_id, "active", 384, "bit")
        assert model.vectors == before["chunk_vectors"] and model.current == 3
        # Everything still works in its new place: deletion tombstones, search over the moved vectors.
        c.execute("DELETE FROM embed_assets.recordings WHERE recording_id = 'old-2'")
        assert c.execute("SELECT recording_id FROM embed_assets.deleted_recordings").fetchall() == [("old-2",)]
        content = c.execute(
            "SELECT content FROM embed_assets.chunks WHERE recording_id = 'old-3' ORDER BY chunk_index DESC LIMIT 1"
        ).fetchone()[0]
        hits = search(c, vector_for(content, 384), None, 1, mode="vector")
        assert hits[0].recording_id == "old-3" and hits[0].score == pytest.approx(1.0)
        assert migrate(c, 384) == []  # and once is enough


def test_a_schema_name_of_the_users_choice(scratch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMBED_SCHEMA", "call_vectors")
    with psycopg.connect(scratch, autocommit=True) as c:
        assert migrate(c, 384) == [m.version for m in MIGRATIONS]
        assert {"recordings", "chunk_vectors", "schema_migrations"} <= relations_in(c, "call_vectors")
        assert not relations_in(c, "embed_assets")
    for bad in ("public", "Embed-Assets"):
        monkeypatch.setenv("EMBED_SCHEMA", bad)
        with psycopg.connect(scratch, autocommit=True) as c, pytest.raises(ConfigError, match="EMBED_SCHEMA"):
            migrate(c, 384)


def test_a_role_without_ddl_rights_is_told_what_to_run(scratch: str) -> None:
    with psycopg.connect(scratch, autocommit=True) as c:
        c.execute("DROP ROLE IF EXISTS no_ddl_role")
        c.execute("CREATE ROLE no_ddl_role LOGIN")
        try:
            c.execute("SET ROLE no_ddl_role")
            with pytest.raises(ConfigError, match=r"may not change schema 'embed_assets'.*embed-assets migrate"):
                migrate(c, 384)
            c.execute("RESET ROLE")
            migrate(c, 384)  # the owner
            c.execute("SET ROLE no_ddl_role")
            with pytest.raises(
                ConfigError, match=r"no access to schema 'embed_assets'.*embed-assets grant no_ddl_role"
            ):
                migrate(c, 384)
        finally:
            c.execute("RESET ROLE")
            c.execute("DROP OWNED BY no_ddl_role")
            c.execute("DROP ROLE no_ddl_role")


def test_roles_granted_before_an_upgrade_reach_what_it_creates(scratch: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from embed_assets.lib.db import migrations, roles

    with psycopg.connect(scratch, autocommit=True) as c:
        migrate(c, 384)
        if c.execute("SELECT 1 FROM pg_roles WHERE rolname = 'upgrade_worker'").fetchone() is None:
            c.execute("CREATE ROLE upgrade_worker LOGIN")
        roles.grant(c, "upgrade_worker", "runtime")
        new = migrations.Migration(
            LATEST + 1,
            "a later table",
            lambda conn, dim: conn.execute("CREATE TABLE embed_assets.later_table (id int PRIMARY KEY)"),  # fmt: skip
        )
        monkeypatch.setattr(migrations, "MIGRATIONS", (*MIGRATIONS, new))
        monkeypatch.setattr(migrations, "LATEST", LATEST + 1)
        assert migrations.migrate(c, 384) == [LATEST + 1]
        assert c.execute(
            "SELECT has_table_privilege('upgrade_worker', 'embed_assets.later_table', 'INSERT')"
        ).fetchone()[0]
        policies = c.execute("SELECT count(*) FROM pg_policies WHERE tablename = 'later_table'").fetchone()[0]
        assert policies == 1  # and row-level security lets it see the rows
        roles.revoke(c, "upgrade_worker")
        c.execute("DROP ROLE upgrade_worker")
