"""The Postgres users already have (Supabase-shaped, support/hosted.py): PgBouncer in transaction mode, one
database, a non-superuser owner and a worker without DDL rights, pgvector in `extensions`, application tables
of the same names in `public`, and `anon` / `authenticated` with Supabase's default privileges."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from embed_assets_tests.support.hosted import APP, APP_TABLES, OWNER, PASSWORDS, WORKER, Hosted, pgbouncer_missing
from embed_assets_tests.test_cli import cli

pytestmark = pytest.mark.skipif(pgbouncer_missing() is not None, reason=str(pgbouncer_missing()))


def public_snapshot(h: Hosted) -> dict[str, object]:
    """Every object in `public` with its definition, and the rows of the application's tables."""
    with h.admin() as c:
        objects = c.execute(
            """SELECT c.relname, c.relkind, array_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                                                    ORDER BY a.attnum)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
               WHERE n.nspname = 'public' GROUP BY 1, 2 ORDER BY 1"""
        ).fetchall()
        rows = {t: c.execute(f"SELECT * FROM public.{t} ORDER BY 1").fetchall() for t in APP_TABLES}  # noqa: S608
        funcs = c.execute(
            "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE nspname = 'public'"
        ).fetchall()
    return {"objects": objects, "rows": rows, "functions": funcs}


@pytest.fixture(scope="module")
def hosted(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosted]:
    from embed_assets_tests.support.hosted import hosted_database

    with hosted_database(db_url, tmp_path_factory.mktemp("pooler"), tls=True) as h:
        yield h


@pytest.fixture(scope="module")
def migrated(hosted: Hosted) -> dict[str, object]:
    """The owner migrates through the pooler; returns `public` as it was before."""
    before = public_snapshot(hosted)
    proc = cli("migrate", env={"EMBED_DATABASE_URL": hosted.pooler_url(OWNER)})
    assert proc.returncode == 0, proc.stderr
    assert "schema embed_assets" in proc.stdout and "pgvector in schema extensions" in proc.stdout
    assert PASSWORDS[OWNER] not in proc.stdout + proc.stderr
    return before


def env_for(h: Hosted, role: str, tmp_path: Path) -> dict[str, str]:
    """A worker's environment: vector store through the transaction pooler, Dagster on the direct URL."""
    return {
        "EMBED_DATABASE_URL": h.pooler_url(role),
        "EMBED_DAGSTER_DATABASE_URL": h.direct_url(OWNER),
        "EMBED_HOME": str(tmp_path / "home"),
    }


def test_a_schema_of_its_own_leaves_the_users_public_tables_untouched(hosted: Hosted, migrated: dict) -> None:
    assert public_snapshot(hosted) == migrated
    with hosted.admin() as c:
        ours = {
            r[0]
            for r in c.execute(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE nspname = 'embed_assets' AND relkind IN ('r', 'p', 'v')"
            )
        }
        assert {"recordings", "transcript_segments", "chunks", "chunk_vectors", "transcript_chunks"} <= ours
        assert "schema_migrations" in ours
        owner = c.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'embed_assets'")
        assert owner.fetchone()[0] == OWNER


def test_sample_embed_status_search_sensor_and_schedule_through_the_transaction_pooler(
    hosted: Hosted, migrated: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = env_for(hosted, OWNER, tmp_path)
    for args in (("sample", "4", "--no-long-call"), ("embed",)):
        proc = cli(*args, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    status = json.loads(cli("status", "--json", env=env, check=True).stdout)
    assert (status["recordings"], status["embedded_current"], status["failed"]) == (4, 4, 0)
    hits = cli("search", "price increase", "-k", "2", "--json", env=env, check=True).stdout.splitlines()
    assert len(hits) == 2 and {"recording_id", "score", "content"} <= set(json.loads(hits[0]))
    # More than psycopg's prepare threshold (5) of the same statements ran through the pooler: none was
    # prepared on a server connection (that failed every run with DuplicatePreparedStatement before).
    assert "DuplicatePreparedStatement" not in proc.stderr

    # The sensor and the retry schedule, evaluated on an instance whose storage is the hosted database.
    from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
    from embed_assets.defs.schedules import retry_failed_recordings
    from embed_assets.defs.sensors import new_recordings_sensor

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("EMBED_SENSOR_SETTLE_S", "0")
    resources = {"store": VectorStoreResource(), "embedder": EmbedderResource()}
    with dg.instance_for_test() as instance:
        result = new_recordings_sensor(dg.build_sensor_context(instance=instance, resources=resources))
        added = [k for r in result.dynamic_partitions_requests or [] for k in r.partition_keys]
        assert len(added) == 4  # every recording is known; none needs a run (all embedded)
        assert not result.run_requests
        sched = retry_failed_recordings(
            dg.build_schedule_context(
                instance=instance, scheduled_execution_time=datetime.now(UTC), resources=resources
            )
        )
        assert isinstance(sched, dg.SkipReason) and "0 failed" in str(sched.skip_message)


def test_a_worker_without_ddl_rights_runs_once_the_owner_granted_it(
    hosted: Hosted, migrated: dict, tmp_path: Path
) -> None:
    from embed_assets.lib.health.config import check_configuration
    from embed_assets.lib.models import resolve_model

    env = env_for(hosted, WORKER, tmp_path)
    report = check_configuration(
        lambda: resolve_model("local", "all-MiniLM-L6-v2"), lambda: env["EMBED_DATABASE_URL"], True
    )
    assert not report.ok and f"embed-assets grant {WORKER} --access runtime" in report.problems[0]  # the check too
    before = cli("status", "--json", env=env)
    assert before.returncode == 3  # status cannot be evaluated
    assert "no access to schema" in before.stderr and "embed-assets grant" in before.stderr
    assert len(before.stderr.strip().splitlines()) == 1, before.stderr
    granted = cli("grant", WORKER, "--access", "runtime", env=env_for(hosted, OWNER, tmp_path))
    assert granted.returncode == 0, granted.stderr
    proc = cli("sample", "2", "--no-long-call", "--seed", "11", env=env)
    assert proc.returncode == 0, proc.stderr
    assert cli("embed", env=env).returncode == 0
    status = json.loads(cli("status", "--json", env=env, check=True).stdout)
    assert status["failed"] == 0 and status["embedded_current"] == status["recordings"]
    with psycopg.connect(hosted.direct_url(WORKER), autocommit=True) as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("CREATE TABLE embed_assets.worker_made (x int)")


def test_supabase_roles_read_nothing_even_when_the_schema_is_exposed(hosted: Hosted, migrated: dict) -> None:
    with hosted.admin() as c:
        assert c.execute("SELECT count(*) FROM embed_assets.transcript_segments").fetchone()[0] > 0
        for role in ("anon", "authenticated"):
            c.execute(f"SET ROLE {role}")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SELECT count(*) FROM embed_assets.transcript_segments")
            c.execute("RESET ROLE")
        # A user exposes the schema in the Data API and grants it wholesale: still zero rows (row security).
        c.execute("GRANT USAGE ON SCHEMA embed_assets TO anon")
        c.execute("GRANT SELECT ON ALL TABLES IN SCHEMA embed_assets TO anon")
        try:
            c.execute("SET ROLE anon")
            for table in ("transcript_segments", "chunks", "chunk_vectors", "recordings", "transcript_chunks"):
                assert c.execute(f"SELECT count(*) FROM embed_assets.{table}").fetchone()[0] == 0, table  # noqa: S608
        finally:
            c.execute("RESET ROLE")
            c.execute("REVOKE ALL ON ALL TABLES IN SCHEMA embed_assets FROM anon")
            c.execute("REVOKE ALL ON SCHEMA embed_assets FROM anon")


def test_misconfigurations_reach_the_user_as_one_line(hosted: Hosted, migrated: dict, tmp_path: Path) -> None:
    cases = {
        "wrong password": (
            {"EMBED_DATABASE_URL": hosted.pooler_url(OWNER, password="wrong-password-1")},
            ["refused the user or password", "EMBED_DATABASE_URL"],
        ),
        "unreachable": (
            {"EMBED_DATABASE_URL": f"postgresql://{OWNER}:x@127.0.0.1:1/{hosted.database}"},
            ["cannot reach the database", "EMBED_DATABASE_URL"],
        ),
        "Dagster storage behind the transaction pooler": (
            {"EMBED_DATABASE_URL": hosted.pooler_url(OWNER)},
            ["transaction pooler", "EMBED_DAGSTER_DATABASE_URL"],
        ),
        "untrusted TLS certificate": (
            {"EMBED_DATABASE_URL": hosted.pooler_url(OWNER) + "?sslmode=verify-full"},
            ["TLS", "sslrootcert"],
        ),
    }
    for name, (env, expected) in cases.items():
        proc = cli("status", env={**env, "EMBED_HOME": str(tmp_path / "home")})
        assert proc.returncode == 3, name  # status cannot be evaluated
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and all(e in lines[0] for e in expected), (name, proc.stderr)
        assert "wrong-password-1" not in proc.stderr and PASSWORDS[OWNER] not in proc.stderr


def test_tls_verify_full_against_a_certificate_authority_made_here(
    hosted: Hosted, migrated: dict, tmp_path: Path
) -> None:
    env = {**env_for(hosted, OWNER, tmp_path), "EMBED_DATABASE_URL": hosted.pooler_url(OWNER, tls="verify-full")}
    proc = cli("status", "--json", env=env)
    assert proc.returncode == 0, proc.stderr
    with psycopg.connect(hosted.pooler_url(OWNER, tls="verify-full")) as c:
        assert c.pgconn.ssl_in_use


def test_an_app_role_calls_embed_search_and_no_one_else_can(hosted: Hosted, migrated: dict, tmp_path: Path) -> None:
    signature = "embed_assets.embed_search(extensions.vector, text, integer, text)"
    with hosted.admin() as c:
        for role in ("anon", "authenticated", APP):
            assert not c.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, signature)).fetchone()[0]
    granted = cli("grant", APP, "--access", "search", env=env_for(hosted, OWNER, tmp_path))
    assert granted.returncode == 0, granted.stderr
    with hosted.admin() as c:
        assert c.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')", (APP, signature)).fetchone()[0]
        for role in ("anon", "authenticated"):
            assert not c.execute("SELECT has_function_privilege(%s, %s, 'EXECUTE')", (role, signature)).fetchone()[0]
        query = c.execute("SELECT embedding FROM embed_assets.chunk_vectors LIMIT 1").fetchone()[0]
    with psycopg.connect(hosted.pooler_url(APP), autocommit=True) as app:
        rows = app.execute(
            "SELECT recording_id, chunk_index, score FROM embed_assets.embed_search(%s::extensions.vector, %s, 3)",
            (query, "price"),
        ).fetchall()
        assert len(rows) == 3
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT count(*) FROM embed_assets.transcript_segments")


def test_the_apps_own_table_is_the_source_through_the_pooler(hosted: Hosted, migrated: dict, tmp_path: Path) -> None:
    """EMBED_SOURCE over an application table in the same database, read by the worker through the transaction
    pooler with SELECT only; the recordings loaded from files earlier keep their vectors beside it."""
    lines = "\n".join(
        f"Dana: meeting {{m}} point {i}: the renewal, the seats and the security review." for i in range(12)
    )
    with hosted.admin() as c:
        c.execute("CREATE TABLE public.meetings (id bigint PRIMARY KEY, transcript text,"
                  " updated_at timestamptz NOT NULL DEFAULT clock_timestamp())")  # fmt: skip
        for m in (1, 2):
            c.execute("INSERT INTO public.meetings (id, transcript) VALUES (%s, %s)", (m, lines.format(m=m)))
        c.execute(f"GRANT SELECT ON public.meetings TO {WORKER}")
    source = tmp_path / "source.yaml"
    source.write_text(
        "recordings: SELECT 'meeting-' || id AS recording_id, updated_at FROM public.meetings\n"
        "transcripts:\n  query: SELECT 'meeting-' || id AS recording_id, transcript FROM public.meetings\n"
        "  format: text\n"
    )
    env = {**env_for(hosted, WORKER, tmp_path), "EMBED_SOURCE": str(source)}
    try:
        proc = cli("status", "--json", env=env)
        before = json.loads(proc.stdout)
        assert before["recordings"] == before["embedded_current"] > 0  # loaded from files by earlier tests
        # The source's 2 rows are not registered until `embed` (or the sensor) reads it: a warning, exit 1.
        assert proc.returncode == 1 and before["unregistered_source_rows"] == 2
        proc = cli("embed", env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "source: 2 recording(s); 2 new" in proc.stdout
        after = json.loads(cli("status", "--json", env=env, check=True).stdout)
        assert after["recordings"] == after["embedded_current"] == before["recordings"] + 2
        assert after["source"].startswith("source (") and "the vector store's database" in after["source"]
    finally:
        with hosted.admin() as c:
            c.execute("DROP TABLE public.meetings")
