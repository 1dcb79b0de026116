"""The best frictionless `w0` for damped pendulum trajectories.

A hybrid whose correction is (nearly) switched off is the frictionless
pendulum `theta'' = -w0^2 sin(theta)`; fitted to damped data it settles
on a `w0` below the true one. This script computes that `w0` on the
training trajectories of `pendulum_images` (seed 0: 128 sequences, 25
steps of 0.1 s, true `w0 = 1`, damping 0.2): for each `w0` on a grid,
each trajectory's initial state is refitted (Gauss-Newton) to the true
angles, and the mean squared angle error is printed. NumPy only.

Usage: `python benchmarks/frictionless_fit.py`
"""

import numpy as np


def rk4(field, y0, times, substeps=10):
    ys, y = [y0], y0
    for t0, t1 in zip(times[:-1], times[1:]):
        dt = (t1 - t0) / substeps
        for _ in range(substeps):
            k1 = field(y)
            k2 = field(y + dt / 2 * k1)
            k3 = field(y + dt / 2 * k2)
            k4 = field(y + dt * k3)
            y = y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        ys.append(y)
    return np.stack(ys, -2)


def pendulum(w0, gamma):
    return lambda y: np.stack([y[..., 1], -(w0**2) * np.sin(y[..., 0]) - gamma * y[..., 1]], -1)


def best_fit_error(w0, times, angles, initial, iterations=15):
    """Mean squared angle error of the frictionless pendulum at `w0`, the
    initial states refitted per trajectory."""
    s = initial.copy()
    for _ in range(iterations):
        r = rk4(pendulum(w0, 0.0), s, times)[..., 0] - angles
        jac = []
        for k in range(2):
            d = np.zeros(2)
            d[k] = 1e-5
            jac.append((rk4(pendulum(w0, 0.0), s + d, times)[..., 0] - angles - r) / 1e-5)
        jac = np.stack(jac, -1)
        a = np.einsum("nti,ntj->nij", jac, jac) + 1e-9 * np.eye(2)
        b = np.einsum("nti,nt->ni", jac, r)
        s = s - np.linalg.solve(a, b[..., None])[..., 0]
    return float(np.mean((rk4(pendulum(w0, 0.0), s, times)[..., 0] - angles) ** 2))


def main():
    # The initial states of `pendulum_images.simulate(128, seed=0)`.
    rng = np.random.default_rng(0)
    y0 = np.stack([rng.uniform(-1.57, 1.57, 128), rng.uniform(-1.0, 1.0, 128)], -1)
    times = np.arange(25) * 0.1
    truth = rk4(pendulum(1.0, 0.2), y0, times)
    grid = np.round(np.arange(0.80, 1.101, 0.02), 3)
    errors = [best_fit_error(w0, times, truth[..., 0], truth[:, 0]) for w0 in grid]
    for w0, err in zip(grid, errors):
        print(f"w0 = {w0:.2f}: angle MSE {err:.3e}")
    print(f"best frictionless w0: {grid[int(np.argmin(errors))]:.2f}")


if __name__ == "__main__":
    main()
