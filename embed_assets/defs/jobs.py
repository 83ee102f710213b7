import dagster as dg

from embed_assets.defs.assets import chunk_embeddings, transcript_chunks

embed_recordings = dg.define_asset_job(
    name="embed_recordings",
    selection=dg.AssetSelection.assets(transcript_chunks, chunk_embeddings),
    description=(
        "Chunk and embed recordings (one partition per recording). For a failed recording, launch it with "
        "the small-batch preset: embed_assets/presets/small_batch.yaml."
    ),
)
