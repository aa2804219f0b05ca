"""Benchmarks that print tables: ``python -m minieq.bench.data`` (SynthScapes rendering speed),
``python -m minieq.bench.decode`` (long-decode memory), ``python -m minieq.bench.sampling``
(KV-cache vs recompute sampling)."""
