"""The one entry point: builds Definitions from defs/, nothing else."""

import dagster as dg

from embed_assets.defs.assets import chunk_embeddings, transcript_chunks
from embed_assets.defs.checks import embedding_config_valid
from embed_assets.defs.jobs import embed_recordings
from embed_assets.defs.resources import EmbedderResource, VectorStoreResource

defs = dg.Definitions(
    assets=[transcript_chunks, chunk_embeddings],
    asset_checks=[embedding_config_valid],
    jobs=[embed_recordings],
    resources={"store": VectorStoreResource(), "embedder": EmbedderResource()},
)
