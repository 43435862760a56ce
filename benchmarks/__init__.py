"""Benchmarks for the custody core. Run all of them with `python -m benchmarks.run`.

Every figure is reported next to a baseline measured in the same run
(interleaved rounds, best of N), because absolute numbers on shared machines
are noisy; see benchmarks/RESULTS.md for the latest full run.
"""
