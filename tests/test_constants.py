import numpy as np
import pytest

from keras_hybrid import PhysicalConstant


@pytest.mark.parametrize(
    "constraint, value",
    [(None, -3.0), ("positive", 1e-3), ("positive", 25.0), ((0.0, 2.0), 1.5), ((-1.0, 1.0), -0.9)],
)
def test_raw_initial_value_maps_back_to_value(constraint, value):
    c = PhysicalConstant("k", value, constraint=constraint)
    back = float(np.asarray(c.to_physical(c.raw_initial_value())))
    np.testing.assert_allclose(back, value, rtol=1e-5)


@pytest.mark.parametrize("constraint", ["positive", (0.5, 2.0)])
def test_constraint_holds_for_any_raw_value(constraint):
    c = PhysicalConstant("k", 1.0, constraint=constraint)
    raw = np.array([-80.0, -5.0, 0.0, 5.0, 80.0], "float32")
    values = np.asarray(c.to_physical(raw))
    if constraint == "positive":
        assert np.all(values > 0)
    else:
        assert np.all((values >= 0.5) & (values <= 2.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="k", value=-1.0, constraint="positive"), "value=-1.0"),
        (dict(name="k", value=0.0, constraint="positive"), "value=0.0"),
        (dict(name="k", value=3.0, constraint=(0.0, 2.0)), "value=3.0"),
        (dict(name="k", value=1.0, constraint=(2.0, 0.0)), r"constraint=\(2.0, 0.0\)"),
        (dict(name="k", value=float("nan")), "value=nan"),
        (dict(name="k", value="fast"), "value='fast'"),
        (dict(name="not a name", value=1.0), "name='not a name'"),
        (dict(name="k", value=1.0, constraint="negative"), "constraint='negative'"),
    ],
)
def test_bad_constants_are_rejected(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        PhysicalConstant(**kwargs)


def test_config_round_trip():
    c = PhysicalConstant("D", 1e-3, unit="m^2/s", constraint=(0.0, 0.1), description="diffusivity")
    assert PhysicalConstant.from_config(c.get_config()) == c
