"""Configuration probes for the `embedding_config_valid` check and `embed-assets status`. Dagster-free."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from embed_assets.lib.db.connection import connect
from embed_assets.lib.db.migrations import check_access, may_create_schema, require_schema, schema_version
from embed_assets.lib.db.names import names
from embed_assets.lib.errors import ConfigError, EmbedAssetsError
from embed_assets.lib.models import ModelSpec
from embed_assets.lib.models.registry import registered, replaces
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
    providers = {spec.provider} if spec is not None else set()
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
            if not may_create_schema():
                require_schema(conn)  # a mistyped EMBED_SCHEMA is named, not created by the first run
            check_access(conn)
            providers = _check_models(conn, spec, report) or providers
    except (EmbedAssetsError, psycopg.Error) as e:
        report.fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    if "openai" in providers and not api_key_present:
        report.fail(
            "OPENAI_API_KEY is not set in the run worker's environment; set it where the Dagster code "
            "location and run workers start (dagster dev / daemon / run launcher), not only in your shell"
        )
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
        with ext.connect() as conn, conn.transaction():
            # READ ONLY: the source's SQL is the user's, and checking it must not change anything (a query calling
            # lo_create, say, would otherwise create a large object at every check).
            conn.execute("SET TRANSACTION READ ONLY")
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


def _check_models(conn: psycopg.Connection, configured: ModelSpec | None, report: ConfigReport) -> set[str]:
    """The registered models (lib/models/registry.py): each resolvable here, its table of vectors present with the
    registered dimension. Returns the providers they need. The configured model (EMBED_MODEL) not being registered
    is only a warning: the registry rules once vectors exist, and runs keep every registered model current."""
    if schema_version(conn) < 8:
        report.facts["models"] = "none registered yet (`embed-assets migrate` or the first run registers EMBED_MODEL)"
        report.facts["table_dimension"] = "not created yet"
        return set()
    try:
        regs = registered(conn)
    except ConfigError as e:
        report.fail(f"{e}; drop it with `embed-assets model drop`, or serve it here")
        return set()
    if not regs:
        report.facts["models"] = "none registered yet (the first run registers EMBED_MODEL)"
        report.facts["table_dimension"] = "not created yet"
        return set()
    if configured is not None and replaces(conn, configured, regs):
        report.facts["models"] = (
            f"{configured.model_id} (the first run registers it in place of {regs[0].model_id}: no vector stored yet)"
        )
        report.facts["table_dimension"] = configured.dimension
        return {configured.provider}
    report.facts["models"] = ", ".join(f"{r.model_id} ({r.state}, {r.spec.dimension} dims)" for r in regs)
    report.facts["model"] = regs[0].model_id if regs[0].active else "none active"
    report.facts["model_dimension"] = regs[0].spec.dimension
    report.facts["table_dimension"] = regs[0].spec.dimension
    checks = dict(
        conn.execute(
            """SELECT c.relname, pg_get_constraintdef(k.oid)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_constraint k ON k.conrelid = c.oid AND k.contype = 'c'
               WHERE n.nspname = %s AND c.relname = ANY(%s)""",
            (names(conn).schema, [r.partition for r in regs]),
        ).fetchall()
    )
    for r in regs:
        if r.partition not in checks:
            report.fail(
                f"model {r.model_id} is registered but its table of vectors ({r.partition}) is missing; "
                f"run `embed-assets model drop {r.model_id}` and register it again with `embed-assets model shadow`"
            )
        elif f"= {r.spec.dimension})" not in (checks[r.partition] or ""):
            report.fail(
                f"model {r.model_id} makes {r.spec.dimension}-dim vectors but its table {r.partition} is constrained "
                f"to {checks[r.partition]}; run `embed-assets model drop {r.model_id}` and "
                f"`embed-assets model shadow {r.spec.name}` to rebuild it"
            )
    if not regs[0].active:
        report.fail(f"no model is active; run `embed-assets model activate {regs[0].model_id}`")
    if configured is not None and configured.model_id not in {r.model_id for r in regs}:
        report.warnings.append(
            f"EMBED_PROVIDER/EMBED_MODEL/EMBED_DIMENSIONS name {configured.model_id}, which this database does not "
            f"hold; it keeps {regs[0].model_id} current and serving. To move to {configured.model_id}: "
            f"`embed-assets model shadow {configured.name}`; or set EMBED_MODEL={regs[0].spec.name}"
        )
    return {r.spec.provider for r in regs}
