"""Measurement: timing and memory (``timing``) and K/V staleness across decoding steps (``kv_similarity``)."""
