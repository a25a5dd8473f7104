"""Benchmarks of keras_fa: speed, alignment cost, learning rules."""
