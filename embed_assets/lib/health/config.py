"""Configuration probes for the `embedding_config_valid` check and `embed-assets status`. Dagster-free."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from embed_assets.lib.db.connection import connect
from embed_assets.lib.db.migrations import check_access, vector_dimension
from embed_assets.lib.db.names import names, q
from embed_assets.lib.errors import ConfigError, EmbedAssetsError
from embed_assets.lib.models import ModelSpec
from embed_assets.lib.sources.external import ExternalSource


@dataclass
class ConfigReport:
    ok: bool = True
    problems: list[str] = field(default_factory=list)  # each names the fix
    facts: dict[str, object] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # worth fixing, but runs can work

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)


def check_configuration(
    resolve_spec: Callable[[], ModelSpec],
    database_url: Callable[[], str],
    api_key_present: bool,
    probe: Callable[[], None] | None = None,
    source: Callable[[], ExternalSource | None] | None = None,
    alert_channels: Callable[[], list[tuple[str, bool, str]]] | None = None,
) -> ConfigReport:
    """Every property that must hold before paying for embeddings; each failure names its fix. With
    ``alert_channels`` (channel, reachable, how) also whether each configured alert channel is reachable:
    a malformed alert setting is a problem, an unreachable channel only a warning (runs can still work), an
    unconfigured one neither (alerts are off by default)."""
    report = ConfigReport()
    if source is not None:
        _check_source(source, report)
    spec: ModelSpec | None = None
    try:
        spec = resolve_spec()
        report.facts.update(provider=spec.provider, model=spec.model_id, model_dimension=spec.dimension)
    except ConfigError as e:
        report.fail(str(e))
    if spec is not None and spec.provider == "openai" and not api_key_present:
        report.fail(
            "OPENAI_API_KEY is not set in the run worker's environment; set it where the Dagster code "
            "location and run workers start (dagster dev / daemon / run launcher), not only in your shell"
        )
    try:
        url = database_url()
        with connect(url) as conn:
            report.facts["database"] = "reachable"
            ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            if ext is None and _can_create_pgvector(conn):
                report.facts["pgvector"] = "not installed yet; `embed-assets migrate` creates it"
            elif ext is None:
                report.fail(
                    "the pgvector extension is not installed in the vector database and this role may not create "
                    "it; an admin runs CREATE EXTENSION vector (on Supabase: Database > Extensions)"
                )
            else:
                report.facts["pgvector"] = ext[0]
            check_access(conn)
            _check_vectors(conn, spec, report)
    except (EmbedAssetsError, psycopg.Error) as e:
        report.fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    if report.ok and probe is not None:
        try:
            probe()
            report.facts["probe"] = "one live request accepted"
        except EmbedAssetsError as e:
            report.fail(f"live probe failed: {e}")
    if alert_channels is not None:
        _check_alert_channels(alert_channels, report)
    return report


def _check_source(source: Callable[[], ExternalSource | None], report: ConfigReport) -> None:
    """EMBED_SOURCE: the file is valid, its database reachable, its queries run and yield the right columns."""
    try:
        ext = source()
        if ext is None:
            report.facts["source"] = "project tables (recordings, transcript_segments)"
            return
        report.facts["source"] = ext.describe()
        with ext.connect() as conn:
            ids = ext.ids(conn)
        cursor = "updated_at cursor" if ext.has_updated_at else f"hash reconcile every {ext.definition.reconcile_s:g} s"
        report.facts["source_rows"] = f"{len(ids)} recordings readable ({cursor})"
    except (EmbedAssetsError, psycopg.Error) as e:
        report.fail(str(e).splitlines()[0] if str(e) else type(e).__name__)


def _check_alert_channels(probe: Callable[[], list[tuple[str, bool, str]]], report: ConfigReport) -> None:
    try:
        results = probe()
    except ConfigError as e:
        report.fail(str(e))
        return
    if not results:
        report.facts["alert_channels"] = "none configured (alerts off)"
    for name, reachable, how in results:
        report.facts[f"alert_{name}"] = how
        if not reachable:
            report.warnings.append(
                f"alert channel {name} is {how}; alerts will be retried and logged, not delivered, until it is"
            )
    if results:
        ok = all(r[1] for r in results)
        report.facts["alert_channels"] = "reachable" if ok else "some not reachable (see warnings)"


def _can_create_pgvector(conn: psycopg.Connection) -> bool:
    """A superuser, or a role with CREATE on the database when pgvector's default version is trusted."""
    row = conn.execute(
        """SELECT r.rolsuper OR (v.trusted AND has_database_privilege(current_database(), 'CREATE'))
           FROM pg_roles r, pg_available_extension_versions v JOIN pg_available_extensions a USING (name)
           WHERE r.rolname = current_user AND v.name = 'vector' AND v.version = a.default_version"""
    ).fetchone()
    return bool(row and row[0])


def _check_vectors(conn: psycopg.Connection, spec: ModelSpec | None, report: ConfigReport) -> None:
    dim = vector_dimension(conn)
    report.facts["table_dimension"] = dim if dim is not None else "not created yet"
    if spec is None or dim is None:
        return
    if dim != spec.dimension:
        report.fail(
            f"chunk_vectors holds {dim}-dim vectors but {spec.model_id} makes {spec.dimension}-dim ones; "
            f"point EMBED_DATABASE_URL at a database for this model, or set EMBED_MODEL/EMBED_DIMENSIONS back "
            f"to a {dim}-dim model"
        )
    others = conn.execute(
        q(conn, "SELECT model, count(*) FROM {s}.chunk_vectors WHERE model <> %s GROUP BY model ORDER BY model"),
        (spec.model_id,),
    ).fetchall()
    if others:
        report.fail(
            "chunk_vectors also holds vectors of other models "  # noqa: S608 (a message, not SQL)
            f"({', '.join(f'{m}: {n}' for m, n in others)}) that search would mix with {spec.model_id}; "
            f"delete them (DELETE FROM {names(conn).schema}.chunk_vectors WHERE model <> ...) "
            "or switch EMBED_MODEL back"
        )
