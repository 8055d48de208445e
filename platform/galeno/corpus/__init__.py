"""Corpus stage: raw multi-format sources -> clean, deduplicated Spanish corpus (Ray Data)."""
