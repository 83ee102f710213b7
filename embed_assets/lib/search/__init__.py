"""Search: the modes (hybrid, vector, text) fused in one SQL function, batch search, and retrieval evaluation."""
