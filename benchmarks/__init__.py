"""Benchmarks: scripts that print figures for people to read, never timed assertions.

Run them from the repository root as modules (``python -m benchmarks.<name>``)
so that ``mapper``, ``democrm`` and ``tests.support`` are importable; see
``benchmarks/README.md``.
"""
