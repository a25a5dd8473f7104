"""Reproductions of Robertson & Koyejo (ICML 2024), one module a finding.

Each module runs with one command, writes its results as JSON and its
figures as PNG (both atomically) under `benchmarks/results/paper/<name>/`,
and has a `--quick` mode of a few seconds that the tests run:

    python -m benchmarks.paper.conservation   # the conservation law
    python -m benchmarks.paper.classes        # alignment vs number of classes
    python -m benchmarks.paper.label_noise    # fitting 20% flipped labels
    python -m benchmarks.paper.min_norm       # minimum-norm solutions

The write-up with the measured figures is docs/paper.md.
"""
