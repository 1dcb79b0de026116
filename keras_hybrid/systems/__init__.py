"""Benchmark systems: simulators (NumPy, deterministic by seed) and the
hybrid models that learn them."""

from keras_hybrid.systems import pendulum

__all__ = ["pendulum"]
