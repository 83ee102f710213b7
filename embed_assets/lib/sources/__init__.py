"""Where transcripts come from: the project's own tables, or the user's tables read in place (EMBED_SOURCE)."""
