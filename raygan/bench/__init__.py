"""The benchmark library scripts/bench_*.py share: the quality benchmark and BENCHMARKS.md's
generated sections.
"""
