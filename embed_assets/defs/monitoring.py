"""Health on a clock: `pipeline_health`, materialized by the `evaluate_health` schedule every 5 minutes whether or
not any embedding run happens (the daemon down is the one thing it cannot see: that is the heartbeat's job, see
defs/alerts.py). Why an asset and not the checks on a schedule: each materialization stores its numbers as metadata,
and Dagster plots numeric metadata over time on the asset's page (*Catalog -> pipeline_health -> Overview ->
Metadata -> Plots*): that plot is the trend dashboard, with no other service. The verdict is the same as
`embed-assets status`'s."""

import dagster as dg

from embed_assets.defs.assets import GROUP
from embed_assets.defs.checks import configuration_report
from embed_assets.defs.checks import pipeline_health as health_numbers
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.defs.schedules import cron_setting
from embed_assets.lib.health.status import trend, with_configuration

DEFAULT_HEALTH_CRON = "*/5 * * * *"


def health_cron() -> str:
    """EMBED_HEALTH_CRON: when health is evaluated."""
    return cron_setting("EMBED_HEALTH_CRON", DEFAULT_HEALTH_CRON)


@dg.asset(group_name=GROUP)  # one group: the lineage view shows every asset expanded
def pipeline_health(
    context: dg.AssetExecutionContext, store: VectorStoreResource, embedder: EmbedderResource
) -> dg.MaterializeResult:
    """Completion, pending, failed, dead-lettered, oldest pending age, vectors and tokens per hour and the
    estimated cost per day (what the provider billed: vectors copied, reused or adopted count for nothing),
    evaluated on a clock; Overview -> Metadata -> Plots shows them over time. The
    verdict (healthy / warning / critical) comes with its reasons; a configuration problem (the blocking
    check's own finding, e.g. a missing OPENAI_API_KEY where runs execute) makes it critical and is recorded
    as the concrete cause that the alerts (health_alerts sensor) send."""
    # The active model's health (a fresh install evaluated before its first load has nothing to fail on).
    spec = store.models(embedder.spec())[0].spec
    h = health_numbers(context.instance, store, spec.model_id)
    problems = configuration_report(store, embedder, probe=False).problems
    level, reasons = with_configuration(h["verdict"], h["reasons"], problems)
    with store.connect() as conn:
        t = trend(conn, spec.model_id)
    db = h["db"]
    cost_per_day = t.tokens_last_24h * spec.usd_per_million_tokens / 1e6  # billed tokens only: reuse is free
    return dg.MaterializeResult(
        metadata={
            "verdict": level,
            "completion_pct": dg.MetadataValue.float(round(100 * db.completion_rate, 3)),
            "recordings": db.recordings,
            "pending": db.pending,
            "failed": len(h["failed"]),
            "dead_lettered": len(h["dead_lettered"]),
            "oldest_pending_minutes": dg.MetadataValue.float(round(t.oldest_pending_minutes or 0.0, 1)),
            "vectors_last_hour": t.vectors_last_hour,
            "tokens_last_hour": t.tokens_last_hour,
            "estimated_cost_usd_per_day": dg.MetadataValue.float(round(cost_per_day, 6)),
            "unreadable_source_rows": db.unreadable_source_rows,
            "source": h["source"],
            "model": spec.model_id,
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in reasons) or "none"),
            "causes": dg.MetadataValue.json({"problems": problems, "reasons": h["reasons"]}),  # read by the alerts
        },
    )


health_check = dg.define_asset_job(
    name="health_check",
    selection=dg.AssetSelection.assets(pipeline_health),
    description="Evaluate pipeline health once (the evaluate_health schedule runs it every 5 minutes).",
)


@dg.schedule(job=health_check, cron_schedule=health_cron(), default_status=dg.DefaultScheduleStatus.RUNNING)
def evaluate_health(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Every 5 minutes (EMBED_HEALTH_CRON), whether or not embedding runs happen: one small run that records
    the health numbers (pipeline_health)."""
    return dg.RunRequest(run_key=f"health-{context.scheduled_execution_time:%Y%m%dT%H%M}")
