"""Argument checks shared by the simulators.

A count of 0, a step of 0 or a NaN noise level would otherwise come back
as empty arrays, constant trajectories or NaN data, and a string as a
NumPy error that names no argument.
"""

import math
import numbers


def check_count(name, value, minimum=1):
    """`value` as an int, or a `ValueError` unless it is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")
    return int(value)


def check_number(name, value, minimum=None, positive=False):
    """Raises unless `value` is a finite real number (`> 0` with
    `positive`, `>= minimum` with a `minimum`)."""
    number = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not number or (positive and value <= 0) or (minimum is not None and value < minimum):
        bound = " > 0" if positive else "" if minimum is None else f" >= {minimum:g}"
        raise ValueError(f"`{name}` must be a finite number{bound}. Received: {name}={value!r}")
    return value


def check_sampling(n_steps, dt, noise):
    """Validates the sampling arguments of the simulators: at least 2 time
    points, a step `dt > 0`, a noise level `>= 0`."""
    check_count("n_steps", n_steps, minimum=2)
    check_number("dt", dt, positive=True)
    check_number("noise", noise, minimum=0)


def check_seed(seed):
    """Raises unless `seed` is an integer >= 0 (or None: fresh entropy)."""
    if seed is not None:
        check_count("seed", seed, minimum=0)


def check_constants(values):
    """Raises unless every value of the dict `values` is a finite number."""
    for name, value in values.items():
        check_number(name, value)
