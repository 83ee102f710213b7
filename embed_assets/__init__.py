"""embed_assets: keeps a pgvector index of call-transcript embeddings complete, correct and cheap."""
