"""SavedModel export: served predictions and constants, without keras_hybrid."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import keras
import keras_hybrid as kh
from keras_hybrid import export as export_module
from keras_hybrid.systems import pendulum

# Run in a fresh interpreter (isolated mode, cwd outside the repository),
# where importing keras_hybrid is made impossible (the package is installed
# in the test environment, so it must be blocked explicitly).
LOADER = r"""
import sys

class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "keras_hybrid":
            raise ImportError(f"{name} is not available here")
        return None

sys.meta_path.insert(0, _Blocked())
try:
    import keras_hybrid  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("keras_hybrid is importable")

import json
import numpy as np
import tensorflow as tf

directory, inputs_file, outputs_file = sys.argv[1:4]
served = tf.saved_model.load(directory)
inputs = dict(np.load(inputs_file))
predictions = served.signatures["serve"](**{k: tf.constant(v) for k, v in inputs.items()})
constants = served.signatures["constants"]()
units = served.signatures["constant_units"]()
np.savez(
    outputs_file,
    prediction=predictions["output_0"].numpy(),
    **{"constant/" + k: v.numpy() for k, v in constants.items()},
    **{"unit/" + k: np.array(v.numpy().decode()) for k, v in units.items()},
)
print("loaded without keras_hybrid:", "keras_hybrid" not in sys.modules)
"""


def _serve_elsewhere(directory, inputs, tmp_path):
    script = tmp_path / "loader.py"
    script.write_text(LOADER)
    np.savez(tmp_path / "inputs.npz", **inputs)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP")}
    result = subprocess.run(
        [sys.executable, "-I", str(script), str(directory), str(tmp_path / "inputs.npz"),
         str(tmp_path / "outputs.npz")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded without keras_hybrid: True" in result.stdout
    return dict(np.load(tmp_path / "outputs.npz"))


@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def arrhenius(temperature, constants):
    return constants["A"] * keras.ops.exp(-constants["Ea"] / temperature)


def _algebraic_model():
    inputs = keras.Input((1,), name="temperature")
    physics = kh.ScientificLayer(
        arrhenius,
        [
            kh.PhysicalConstant("A", 2.0, unit="1/s", constraint="positive"),
            kh.PhysicalConstant("Ea", 3.0, unit="K", constraint=(0.5, 10.0)),
        ],
        name="arrhenius",
    )
    hidden = keras.layers.Dense(8, "tanh")(inputs)
    outputs = physics(inputs) + keras.layers.Dense(1)(hidden)
    return kh.HybridModel(inputs, outputs, sam=kh.SAM(rho=0.1, perturb="neural"))


def _train_briefly(model, x, y):
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)


def test_algebraic_hybrid_serves_the_same_outputs_without_keras_hybrid(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(1.0, 3.0, (32, 1)).astype("float32")
    y = (1.5 * np.exp(-2.0 / x)).astype("float32")
    model = _algebraic_model()
    _train_briefly(model, x, y)
    constants = model.physical_constants()
    assert constants["A"] != pytest.approx(2.0)  # training moved it

    path = kh.export_saved_model(model, tmp_path / "served")
    served = _serve_elsewhere(path, {"temperature": x}, tmp_path)

    np.testing.assert_allclose(served["prediction"], model.predict(x, verbose=0), rtol=0, atol=1e-6)
    for name, value in constants.items():
        np.testing.assert_allclose(served["constant/" + name], value, rtol=1e-6)
    assert str(served["unit/A"]) == "1/s" and str(served["unit/Ea"]) == "K"
    metadata = kh.load_metadata(path)
    by_name = {c["name"]: c for c in metadata["constants"]}
    assert by_name["Ea"]["constraint"] == [0.5, 10.0]
    assert by_name["A"]["constraint"] == "positive"
    np.testing.assert_allclose(by_name["Ea"]["value"], constants["Ea"], rtol=1e-6)


def test_ode_hybrid_serves_the_same_trajectories_without_keras_hybrid(tmp_path):
    times, y0, observed = pendulum.simulate(n_trajectories=16, n_steps=12)
    model = pendulum.build_model(times, sam=kh.SAM(rho=0.3, perturb="neural"), hidden=16)
    _train_briefly(model, y0, observed)
    path = kh.export_saved_model(model, tmp_path / "pendulum")
    served = _serve_elsewhere(path, {"y0": y0}, tmp_path)

    expected = model.predict(y0, verbose=0)
    assert served["prediction"].shape == (16, 12, 2)
    np.testing.assert_allclose(served["prediction"], expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(served["constant/w0"], model.physical_constants()["w0"], rtol=1e-6)
    assert str(served["unit/w0"]) == "rad/s"


def _cli():
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    if not os.path.exists(cli):
        pytest.skip(f"saved_model_cli not found next to {sys.executable}")
    return cli


def test_saved_model_cli_lists_signatures_and_runs_predictions(tmp_path):
    times, y0, _ = pendulum.simulate(n_trajectories=4, n_steps=6)
    model = pendulum.build_model(times, hidden=8)
    path = kh.export_saved_model(model, tmp_path / "pendulum")
    cli = _cli()
    shown = subprocess.run(
        [cli, "show", "--dir", path, "--all"], capture_output=True, text=True, timeout=300
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    for signature in ("serve", "serving_default", "constants", "constant_units"):
        assert f"signature_def['{signature}']" in shown.stdout
    assert "inputs['y0']" in shown.stdout and "outputs['w0']" in shown.stdout

    np.save(tmp_path / "y0.npy", y0)
    out = tmp_path / "cli_out"
    ran = subprocess.run(
        [cli, "run", "--dir", path, "--tag_set", "serve", "--signature_def", "serve",
         "--inputs", f"y0={tmp_path / 'y0.npy'}", "--outdir", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    np.testing.assert_allclose(
        np.load(out / "output_0.npy"), model.predict(y0, verbose=0), rtol=0, atol=1e-6
    )
    # (`saved_model_cli run` needs at least one input, so the input-free
    # `constants` signature is read through `tf.saved_model.load` above.)


def _small_model():
    inputs = keras.Input((1,), name="x")
    outputs = kh.ScientificLayer(arrhenius, [
        kh.PhysicalConstant("A", 2.0, "1/s"), kh.PhysicalConstant("Ea", 1.0, "K")
    ])(inputs)
    return kh.HybridModel(inputs, outputs)


def test_refuses_to_overwrite_unless_asked(tmp_path):
    model = _small_model()
    target = tmp_path / "served"
    kh.export_saved_model(model, target)
    stamp = (target / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(FileExistsError, match="already exists: '.*served'.*overwrite=True"):
        kh.export_saved_model(model, target)
    assert (target / "saved_model.pb").stat().st_mtime_ns == stamp
    layer = model.layers[-1]
    layer._raw["A"].assign(layer.constant_specs[0].to_raw(4.0))
    kh.export_saved_model(model, target, overwrite=True)
    served = tf.saved_model.load(str(target))
    assert float(served.signatures["constants"]()["A"]) == 4.0
    assert sorted(os.listdir(tmp_path)) == ["served"]  # nothing left aside


def test_a_failed_export_leaves_no_directory(tmp_path, monkeypatch):
    model = _small_model()

    def broken_write_out(archive, filepath):
        os.makedirs(filepath)
        open(os.path.join(filepath, "saved_model.pb"), "w").close()
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_module, "_write_archive", broken_write_out)
    with pytest.raises(RuntimeError, match="disk full"):
        kh.export_saved_model(model, tmp_path / "served")
    assert os.listdir(tmp_path) == []


def test_a_failed_export_removes_the_parent_directories_it_created(tmp_path, monkeypatch):
    model = _small_model()
    (tmp_path / "kept").mkdir()
    monkeypatch.setattr(
        export_module, "_write_archive", lambda *a: (_ for _ in ()).throw(OSError(28, "full"))
    )
    with pytest.raises(OSError, match="full"):
        kh.export_saved_model(model, tmp_path / "kept" / "new_a" / "new_b" / "served")
    assert os.listdir(tmp_path) == ["kept"] and os.listdir(tmp_path / "kept") == []


def test_overwrite_replaces_only_a_saved_model_or_an_empty_directory(tmp_path, monkeypatch):
    model = _small_model()
    results = tmp_path / "results"
    results.mkdir()
    (results / "notes.txt").write_text("a week of work")
    with pytest.raises(FileExistsError, match="holds no SavedModel .*notes.txt"):
        kh.export_saved_model(model, results, overwrite=True)
    assert (results / "notes.txt").read_text() == "a week of work"
    (tmp_path / "empty").mkdir()
    kh.export_saved_model(model, tmp_path / "empty", overwrite=True)
    assert (tmp_path / "empty" / "saved_model.pb").is_file()
    # The empty path would be the working directory: refused, as is the
    # working directory itself (or a parent of it), even if it is empty.
    monkeypatch.chdir(tmp_path / "empty")
    with pytest.raises(ValueError, match="`path` must not be empty.*path=''"):
        kh.export_saved_model(model, "", overwrite=True)
    with pytest.raises(ValueError, match="working directory or one of its parents"):
        kh.export_saved_model(model, ".", overwrite=True)
    assert (tmp_path / "empty" / "saved_model.pb").is_file()
    with pytest.raises(TypeError, match="`overwrite` must be a bool. Received: overwrite='no'"):
        kh.export_saved_model(model, tmp_path / "other", overwrite="no")
    # A file where the export or one of its parents should go.
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not a directory"):
        kh.export_saved_model(model, tmp_path / "afile", overwrite=True)
    with pytest.raises(NotADirectoryError, match="afile' exists and is not a directory"):
        kh.export_saved_model(model, tmp_path / "afile" / "served")
    with pytest.raises(TypeError, match="`path` must be a string or path. Received: path=3"):
        kh.load_metadata(3)


def test_failed_overwrite_keeps_the_previous_export(tmp_path, monkeypatch):
    model = _small_model()
    kh.export_saved_model(model, tmp_path / "served")
    before = sorted(os.listdir(tmp_path / "served"))
    monkeypatch.setattr(
        export_module, "_write_archive", lambda *a: (_ for _ in ()).throw(OSError("io"))
    )
    with pytest.raises(OSError, match="io"):
        kh.export_saved_model(model, tmp_path / "served", overwrite=True)
    assert sorted(os.listdir(tmp_path / "served")) == before
    assert sorted(os.listdir(tmp_path)) == ["served"]


def test_shared_constant_names_get_distinct_signature_keys(tmp_path):
    inputs = keras.Input((1,), name="x")
    first = kh.ScientificLayer(arrhenius, [kh.PhysicalConstant("A", 2.0), kh.PhysicalConstant("Ea", 1.0)], name="one")
    second = kh.ScientificLayer(arrhenius, [kh.PhysicalConstant("A", 3.0), kh.PhysicalConstant("Ea", 1.0)], name="two")
    model = kh.HybridModel(inputs, first(inputs) + second(inputs))
    path = kh.export_saved_model(model, tmp_path / "served")
    constants = tf.saved_model.load(path).signatures["constants"]()
    metadata = {c["name"]: c for c in kh.load_metadata(path)["constants"]}
    assert set(metadata) == {"one/A", "one/Ea", "two/A", "two/Ea"}
    assert float(constants[metadata["one/A"]["signature_key"]]) == pytest.approx(2.0)
    assert float(constants[metadata["two/A"]["signature_key"]]) == pytest.approx(3.0)


def test_wrapped_and_subclassed_models(tmp_path):
    net = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    functional = keras.Model(net.inputs, net.outputs)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype("float32")
    wrapped = kh.SAMModel(functional)
    path = kh.export_saved_model(wrapped, tmp_path / "wrapped")
    served = tf.saved_model.load(path).signatures["serve"]
    (out,) = served(**{functional.inputs[0].name: tf.constant(x)}).values()
    np.testing.assert_allclose(out.numpy(), wrapped.predict(x, verbose=0), atol=1e-6)
    assert tf.saved_model.load(path).signatures["constants"]() == {}

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = kh.SAMModel(Subclassed())
    model(x)
    with pytest.raises(ValueError, match="Pass `input_signature=`"):
        kh.export_saved_model(model, tmp_path / "sub")
    spec = [tf.TensorSpec((None, 3), tf.float32, name="x")]
    path = kh.export_saved_model(model, tmp_path / "sub", input_signature=spec)
    out = tf.saved_model.load(path).signatures["serve"](x=tf.constant(x))["output_0"]
    np.testing.assert_allclose(out.numpy(), model.predict(x, verbose=0), atol=1e-6)


def test_bad_arguments_name_the_value(tmp_path):
    with pytest.raises(TypeError, match="`model` must be a Keras model. Received: model='nope'"):
        kh.export_saved_model("nope", tmp_path / "x")
    model = _small_model()
    with pytest.raises(TypeError, match="`path` must be a string or path. Received: path=3"):
        kh.export_saved_model(model, 3)
    with pytest.raises(FileNotFoundError, match="keras_hybrid.json"):
        kh.load_metadata(tmp_path)
    assert export_module.METADATA_FILE.endswith("keras_hybrid.json")
    with open(os.path.join(kh.export_saved_model(model, tmp_path / "m"), export_module.METADATA_FILE)) as f:
        assert json.load(f)["signatures"]["serve"] == ["x"]


def test_dict_inputs_are_served_by_name(tmp_path):
    # Inputs given as a dict, in an order other than Keras's (sorted) one,
    # and playing different roles: a swap would change the outputs.
    temperature = keras.Input((1,), name="temperature")
    pressure = keras.Input((1,), name="pressure")
    law = kh.ScientificLayer(arrhenius, [kh.PhysicalConstant("A", 2.0, constraint="positive"),
                                        kh.PhysicalConstant("Ea", 1.0)])
    out = keras.layers.Add()([law(temperature), keras.layers.Dense(1, name="pressure_term")(pressure)])
    model = kh.HybridModel({"temperature": temperature, "pressure": pressure}, out)
    wrapped = kh.SAMModel(keras.Model({"temperature": temperature, "pressure": pressure}, out))
    rng = np.random.default_rng(1)
    inputs = {"temperature": rng.uniform(1, 3, (5, 1)).astype("float32"),
              "pressure": rng.uniform(10, 20, (5, 1)).astype("float32")}
    for name, exported in (("functional", model), ("wrapped", wrapped)):
        exported(inputs)
        path = kh.export_saved_model(exported, tmp_path / name)
        serve = tf.saved_model.load(path).signatures["serve"]
        (served,) = serve(**{k: tf.constant(v) for k, v in inputs.items()}).values()
        np.testing.assert_allclose(served.numpy(), exported.predict(inputs, verbose=0), rtol=1e-6)


def test_multiple_shooting_serves_whole_trajectories_from_their_first_state(tmp_path):
    times, _, observed = pendulum.simulate(n_trajectories=4, n_steps=21, dt=0.1)
    layer = kh.ODELayer(pendulum.frictionless_pendulum,
                        [kh.PhysicalConstant("w0", 0.8, unit="rad/s", constraint="positive")], times=times,
                        correction=keras.Sequential([keras.layers.Dense(4, "tanh"), keras.layers.Dense(2)]))
    model = kh.MultipleShooting(layer, segment_length=10, state_size=2)
    path = kh.export_saved_model(model, tmp_path / "ms")
    served = tf.saved_model.load(path).signatures["serve"]
    out = served(trajectories=tf.constant(observed))["output_0"].numpy()
    np.testing.assert_allclose(out, model.predict(observed, verbose=0), atol=1e-6)
    # Only the first state is read: the rest of the trajectory may be anything.
    scrambled = observed.copy()
    scrambled[:, 1:] = 0.0
    np.testing.assert_allclose(served(trajectories=tf.constant(scrambled))["output_0"].numpy(), out, atol=1e-6)
    # Not called yet and no state size: the message says how to give it.
    unsized = kh.MultipleShooting(
        kh.ODELayer(pendulum.frictionless_pendulum, [kh.PhysicalConstant("w0", 0.8)], times=times),
        segment_length=10)
    with pytest.raises(ValueError, match="input shape of model .* is not known yet.*state_size"):
        kh.export_saved_model(unsized, tmp_path / "unsized")


def test_a_nested_input_signature_keeps_its_structure(tmp_path):
    # Per-episode constants given in a dict input: the signature was
    # flattened and the model called on a list (a shape error), as a dict
    # and as Keras's `[dict]` alike.
    times, _, observed = pendulum.simulate(n_trajectories=6, n_steps=11, dt=0.1, seed=1)
    layer = kh.ODELayer(pendulum.frictionless_pendulum, [kh.PhysicalConstant("w0", 0.8)], times=times)
    model = kh.MultipleShooting(layer, segment_length=5, state_size=2)
    w0 = np.linspace(0.5, 1.5, 6).astype("float32")
    inputs = {"trajectories": observed, "constants": {"w0": w0}}
    expected = model.predict(inputs, verbose=0)
    signature = {"trajectories": tf.TensorSpec((None, 11, 2), tf.float32, name="trajectories"),
                 "constants": {"w0": tf.TensorSpec((None,), tf.float32, name="w0")}}
    for name, given in (("dict", signature), ("listed", [signature])):
        path = kh.export_saved_model(model, tmp_path / name, input_signature=given)
        serve = tf.saved_model.load(path).signatures["serve"]
        out = serve(trajectories=tf.constant(observed), w0=tf.constant(w0))["output_0"].numpy()
        np.testing.assert_allclose(out, expected, atol=1e-6)


def test_a_path_tensorflow_would_read_as_a_pattern_is_refused(tmp_path):
    # TensorFlow finds the variables by file pattern: `exp[1]` exported,
    # then failed to load ("Failed to find any matching files").
    with pytest.raises(ValueError, match=r"must not contain the characters.*Received: path=.*exp\[1\]"):
        kh.export_saved_model(_small_model(), tmp_path / "exp[1]" / "model")
    assert not (tmp_path / "exp[1]").exists()


def test_keras_export_of_a_sam_model_around_a_built_model(tmp_path):
    # Keras's own `export` read no input shape from a SAMModel wrapping a
    # built model ("The model provided has never called").
    x = np.random.default_rng(0).normal(size=(8, 3)).astype("float32")
    wrapped = kh.SAMModel(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]))
    wrapped(x)
    wrapped.export(str(tmp_path / "keras_export"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "keras_export"))
    np.testing.assert_allclose(loaded.serve(tf.constant(x)).numpy(), wrapped.predict(x, verbose=0), atol=1e-6)


def test_a_model_solved_with_bdf_is_refused_with_the_way_out(tmp_path):
    # TFP's BDF solver failed inside TensorFlow ("enters the loop with
    # shape (), but has shape <unknown>") when traced for any batch size.
    times = np.linspace(0.0, 1.0, 6)
    layer = kh.ODELayer(pendulum.frictionless_pendulum, [kh.PhysicalConstant("w0", 0.8)], times=times,
                        method="bdf", name="stiff")
    inputs = keras.Input((2,), name="y0")
    model = kh.HybridModel(inputs, layer(inputs))
    with pytest.raises(ValueError, match=r"method='bdf' \(\['stiff'\]\).*method='dopri5'"):
        kh.export_saved_model(model, tmp_path / "bdf")
    assert not (tmp_path / "bdf").exists()
    y0 = np.array([[0.5, 0.0], [0.1, 0.2]], "float32")
    copy = kh.with_times(model, times, method="dopri5")
    path = kh.export_saved_model(copy, tmp_path / "dopri5")
    served = tf.saved_model.load(path).signatures["serve"](y0=tf.constant(y0))["output_0"].numpy()
    np.testing.assert_allclose(served, model.predict(y0, verbose=0), atol=1e-4)
