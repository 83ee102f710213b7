"""The one entry point: builds Definitions from defs/, nothing else."""

import dagster as dg

from embed_assets.defs.alerts import health_alerts
from embed_assets.defs.assets import chunk_embeddings, transcript_chunks
from embed_assets.defs.checks import chunk_integrity, completion_rate, embedding_config_valid
from embed_assets.defs.jobs import embed_recordings
from embed_assets.defs.monitoring import evaluate_health, health_check, pipeline_health
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource
from embed_assets.defs.schedules import retry_failed_recordings
from embed_assets.defs.sensors import new_recordings_sensor

defs = dg.Definitions(
    assets=[transcript_chunks, chunk_embeddings, pipeline_health],
    asset_checks=[embedding_config_valid, completion_rate, chunk_integrity],
    jobs=[embed_recordings, health_check],
    sensors=[new_recordings_sensor, health_alerts],
    schedules=[retry_failed_recordings, evaluate_health],
    resources={"store": VectorStoreResource(), "embedder": EmbedderResource()},
    # Every run's steps are a chain (chunks -> config check -> embeddings -> two checks): a process per step
    # buys no parallelism and cost ~30 s per run here (6 interpreter starts + imports on 2 cores), measured
    # by `make bench` (e2e_run_overhead_mean). Pools are still honoured; runs stay separate processes.
    executor=dg.in_process_executor,
)
