"""Search over embeddings: the on-disk vector index (ann.py), building it and querying it."""
