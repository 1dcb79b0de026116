"""radius_path / choose_radius: the selection rule, the physics-only
reference, stability of constants, and bad input."""

import math

import numpy as np
import pytest

import keras
import keras_hybrid as kh
from keras_hybrid.radius import RadiusPath, choose_radius


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def ohm(current, constants):
    return constants["R"] * current


# -- the pure rule ------------------------------------------------------------


def test_choose_radius_takes_largest_within_tolerance():
    rhos = [0.0, 0.1, 0.3, 1.0]
    val = [1.00, 0.90, 1.10, 1.20]
    # best 0.90; limit 1.125: 0.0, 0.1, 0.3 eligible -> 0.3
    assert choose_radius(rhos, val, tolerance=0.25) == 0.3
    # limit 1.35: 1.0 eligible too
    assert choose_radius(rhos, val, tolerance=0.5) == 1.0
    # plain argmin
    assert choose_radius(rhos, val, tolerance=0.0) == 0.1


def test_choose_radius_never_worse_than_physics_alone():
    rhos = [0.0, 0.1, 0.3, 1.0]
    val = [1.00, 0.90, 1.10, 1.20]
    # the physics part alone reaches 1.05: 0.3 (1.10) is not eligible any more
    assert choose_radius(rhos, val, 0.25, reference_loss=1.05) == 0.1
    # physics alone better than every radius: the best radius is returned
    assert choose_radius(rhos, val, 0.25, reference_loss=0.5) == 0.1


def test_choose_radius_counts_the_noise_of_the_validation_loss():
    rhos = [0.0, 0.01, 0.1]
    val = [1.00, 1.30, 1.60]
    # relative slack alone: limit 1.25 -> plain training
    assert choose_radius(rhos, val, 0.25) == 0.0
    # best loss known to +-0.2 (12 points): limit 1 + 2 * 0.2 = 1.4 -> 0.01
    assert choose_radius(rhos, val, 0.25, standard_errors=[0.2, 0.2, 0.2]) == 0.01
    # the standard error of the *best* radius sets the limit
    assert choose_radius(rhos, val, 0.25, standard_errors=[0.1, 0.5, 0.5]) == 0.0
    # noise_level=0 is the relative rule; 3 standard errors reach 1.6
    assert choose_radius(rhos, val, 0.25, standard_errors=[0.2] * 3, noise_level=0) == 0.0
    assert choose_radius(rhos, val, 0.25, standard_errors=[0.2] * 3, noise_level=3) == 0.1
    # still capped by the physics part alone
    assert choose_radius(rhos, val, 0.25, 1.2, standard_errors=[0.2] * 3) == 0.0
    with pytest.raises(ValueError, match="one entry per radius"):
        choose_radius(rhos, val, standard_errors=[0.1])
    with pytest.raises(ValueError, match="noise_level=-1"):
        choose_radius(rhos, val, noise_level=-1)


def test_standard_error_of_the_validation_loss_from_per_sample_losses():
    from keras_hybrid.radius import _standard_error

    x, y = _data(n=12)
    model = _builder([])(None)
    residual = (np.asarray(model.predict(x, verbose=0)) - y)[:, 0].astype("float64")
    per_sample = residual ** 2
    expected = per_sample.std(ddof=1) / np.sqrt(12)
    np.testing.assert_allclose(_standard_error(model, x, y, 12), expected, rtol=1e-4)


def test_choose_radius_skips_non_finite_losses():
    assert choose_radius([0.0, 0.1, 1.0], [1.0, math.nan, math.inf]) == 0.0
    assert choose_radius([0.0, 1.0], [math.nan, math.nan]) is None


def test_choose_radius_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        choose_radius([0.0, 0.1], [1.0])
    with pytest.raises(ValueError, match="tolerance=-0.1"):
        choose_radius([0.0], [1.0], tolerance=-0.1)


def _row(rho, seed, val, k, train=1.0):
    return {"rho": rho, "seed": seed, "constants": {"k": k}, "train_loss": train,
            "val_loss": val, "net_share": 0.1}


def test_path_summary_choice_and_stability_from_rows():
    rows = [
        _row(0.0, 0, 1.00, 0.50), _row(0.0, 1, 1.20, 0.70),   # mean val 1.10, k 0.60
        _row(0.1, 0, 1.00, 0.98), _row(0.1, 1, 1.00, 1.00),   # mean val 1.00, k 0.99
        _row(1.0, 0, 1.20, 1.01), _row(1.0, 1, 1.20, 1.01),   # mean val 1.20, k 1.01
        _row(3.0, 0, 9.00, 3.00), _row(3.0, 1, 9.00, 3.00),   # underfits
    ]
    physics = {"rho": None, "seed": 0, "constants": {"k": 1.5}, "train_loss": 5.0,
               "val_loss": 5.0, "net_share": 0.0}
    path = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {"k": "1/s"}, {})
    np.testing.assert_allclose([s["val_loss"] for s in path.summary], [1.1, 1.0, 1.2, 9.0])
    np.testing.assert_allclose(path.summary[0]["constants"]["k"], 0.60)
    np.testing.assert_allclose(path.summary[0]["constants_std"]["k"], 0.10)
    assert path.chosen == 1.0
    assert path.eligible == [0.0, 0.1, 1.0]
    # k over the eligible radii: 0.60, 0.99, 1.01 -> spread 0.41 / 0.99
    np.testing.assert_allclose(path.spread["k"], 0.41 / 0.99, rtol=1e-6)
    assert path.stable == {"k": False}
    assert path.network_needed
    assert "<- chosen" in str(path) and "NOT stable" in str(path)
    # Without the plain fit the constant is stable over 0.1 and 1.0.
    stable = RadiusPath(rows[2:], physics, kh.SAM(), 0.25, 0.05, {"k": "1/s"}, {})
    assert stable.eligible == [0.1, 1.0] and stable.stable == {"k": True}


def test_path_says_when_physics_alone_is_enough():
    rows = [_row(0.0, 0, 1.0, 1.0), _row(0.3, 0, 1.1, 1.0)]
    physics = {"rho": None, "seed": 0, "constants": {"k": 1.0}, "train_loss": 0.9,
               "val_loss": 0.9, "net_share": 0.0}
    path = RadiusPath(rows, physics, kh.SAM(), 0.25, 0.05, {}, {})
    assert not path.network_needed
    assert path.chosen == 0.0
    assert "network may not be needed" in str(path)


# -- the path on a real fit -----------------------------------------------------


def _data(n=60, seed=0):
    rng = np.random.default_rng(seed)
    current = rng.uniform(0.5, 2.0, (n, 1)).astype("float32")
    voltage = 4.7 * current + 0.3 * np.sin(3.0 * current) + 0.01 * rng.standard_normal((n, 1))
    return current, voltage.astype("float32")


def _builder(calls):
    def build(sam):
        calls.append(sam)
        current = keras.Input((1,))
        physics = kh.ScientificLayer(
            ohm, [kh.PhysicalConstant("R", 2.0, unit="ohm", constraint="positive")])(current)
        hidden = keras.layers.Dense(8, activation="tanh")(current)
        net = keras.layers.Dense(1, name="correction_out")(hidden)
        model = kh.HybridModel(current, keras.layers.Add()([physics, net]), sam=sam)
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
        return model
    return build


def test_radius_path_fits_each_radius_and_the_physics_alone():
    x, y = _data()
    calls = []
    path = kh.radius_path(_builder(calls), x, y, rhos=[0.3, 0.0], epochs=15, batch_size=16)
    # Radii sorted; plain training gets sam=None, the others the template at rho.
    assert path.rhos == [0.0, 0.3]
    assert calls[0] is None and calls[1] == kh.SAM(rho=0.3) and calls[2] is None
    assert len(path.rows) == 2 and path.physics_only is not None
    assert path.units == {"R": "ohm"}
    # The choice is the rule applied to the recorded losses and their noise.
    assert all(np.isfinite(s["val_se"]) and s["val_se"] > 0 for s in path.summary)
    expected = choose_radius(path.rhos, [s["val_loss"] for s in path.summary], 0.25,
                             path.physics_only["val_loss"],
                             [s["val_se"] for s in path.summary])
    assert path.chosen == expected
    assert path.best_model.sam == (None if expected == 0 else kh.SAM(rho=0.3))
    # Physics alone: the least-squares slope of a line through the origin on
    # the training part (the network is zero and stays zero).
    assert path.physics_only["net_share"] == 0.0
    for row in path.rows:
        assert 0.0 <= row["net_share"] <= 10.0 and math.isfinite(row["val_loss"])
    json_ready = path.to_dict()
    assert json_ready["chosen"] == path.chosen and len(json_ready["rows"]) == 2


def test_physics_only_reference_is_the_least_squares_fit():
    x, y = _data(n=50)
    path = kh.radius_path(_builder([]), x, y, rhos=[0.0], epochs=150, batch_size=50,
                          validation_split=0.2)
    # Same split as radius_path: random permutation with split_seed=0.
    order = np.random.default_rng(0).permutation(50)
    train = np.sort(order[10:])
    xt, yt = x[train, 0].astype("float64"), y[train, 0].astype("float64")
    slope = float(xt @ yt / (xt @ xt))
    np.testing.assert_allclose(path.physics_only["constants"]["R"], slope, rtol=2e-3)
    rss = float(np.mean((yt - slope * xt) ** 2))
    np.testing.assert_allclose(path.physics_only["train_loss"], rss, rtol=2e-2)


def test_net_share_is_zero_only_for_a_zero_network():
    from keras_hybrid.radius import _net_share

    x, _ = _data(n=20)
    model = _builder([])(None)
    for v in model.trainable_variables:
        if not kh.is_physical_variable(v):
            v.assign(np.zeros(v.shape, "float32"))
    assert _net_share(model, x, 20) == 0.0
    # a correction of 1 V on top of R * I (R = 2): share = ||1|| / ||2 I + 1||
    last = model.get_layer("correction_out")
    last.bias.assign(np.ones((1,), "float32"))
    expected = np.linalg.norm(np.ones(20)) / np.linalg.norm(2.0 * x[:, 0] + 1.0)
    np.testing.assert_allclose(_net_share(model, x, 20), expected, rtol=1e-5)
    # and the weights are restored after the computation
    np.testing.assert_allclose(last.bias.numpy(), [1.0])


def test_radius_path_rejects_bad_input():
    x, y = _data(n=10)

    def uncompiled(sam):
        inputs = keras.Input((1,))
        return kh.HybridModel(inputs, keras.layers.Dense(1)(inputs), sam=sam)

    def ignores_sam(sam):
        inputs = keras.Input((1,))
        model = kh.HybridModel(inputs, keras.layers.Dense(1)(inputs), sam=None)
        model.compile(optimizer="sgd", loss="mse")
        return model

    with pytest.raises(ValueError, match="compiled"):
        kh.radius_path(uncompiled, x, y, rhos=[0.0], epochs=1)
    with pytest.raises(ValueError, match="must train with the `sam`"):
        kh.radius_path(ignores_sam, x, y, rhos=[0.1], epochs=1)
    with pytest.raises(ValueError, match="rhos"):
        kh.radius_path(ignores_sam, x, y, rhos=[-0.1], epochs=1)
    with pytest.raises(ValueError, match="distinct"):
        kh.radius_path(ignores_sam, x, y, rhos=[0.1, 0.1], epochs=1)
    with pytest.raises(ValueError, match="validation_split=0.0"):
        kh.radius_path(ignores_sam, x, y, rhos=[0.0], validation_split=0.0, epochs=1)
    with pytest.raises(TypeError, match="build_model=3"):
        kh.radius_path(3, x, y)
    with pytest.raises(ValueError, match="epochs=0"):
        kh.radius_path(ignores_sam, x, y, epochs=0)
