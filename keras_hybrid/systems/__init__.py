"""Benchmark systems: simulators (NumPy, deterministic by seed) and the
physics parts of the hybrid models that learn them."""

from keras_hybrid.systems import duffing, forced_pendulum, pendulum, reaction_diffusion

__all__ = ["duffing", "forced_pendulum", "pendulum", "reaction_diffusion"]
