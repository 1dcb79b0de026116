"""The experiments CLI: JSON contract, method helpers, and the headline
claim on the simple pendulum (SAM recovers w0 better than plain training)."""

import json
import os

import keras
import numpy as np
import pytest

from keras_hybrid import experiments
from keras_hybrid.experiments import methods as methods_lib
from keras_hybrid.constants import PhysicalConstant
from keras_hybrid.layers import ODELayer
from keras_hybrid.radius import RadiusPath
from keras_hybrid.systems.pendulum import frictionless_pendulum

RESULT_KEYS = {
    "method", "seed", "param_error", "param_rel_error", "test_mse", "net_share",
    "constants", "true_constants", "seconds", "param_mse", "val_mse",
}


def test_cli_writes_the_json_contract(tmp_path, capsys):
    out = tmp_path / "out.json"
    experiments.main(["pendulum", "--methods", "erm,minnorm", "--seeds", "2", "--quick",
                      "--epochs", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["system"] == "pendulum" and report["complete"] is True
    assert "jit" not in report["config"]  # the task's default: XLA
    assert [(r["method"], r["seed"]) for r in report["results"]] == [
        ("erm", 0), ("erm", 1), ("minnorm", 0), ("minnorm", 1)]
    for r in report["results"]:
        assert RESULT_KEYS <= set(r)
        assert r["true_constants"] == {"w0": 1.0}
        w0 = r["constants"]["w0"]
        np.testing.assert_allclose(r["param_error"], abs(w0 - 1.0), rtol=1e-6)
        np.testing.assert_allclose(r["param_rel_error"], abs(w0 - 1.0), rtol=1e-6)
        np.testing.assert_allclose(r["param_mse"], (w0 - 1.0) ** 2, rtol=1e-5)
        assert 0.0 < r["net_share"] < 1.0 and r["test_mse"] > 0 and r["seconds"] > 0
    # After one epoch from w0 = 0.5 the estimate has barely moved.
    assert all(abs(r["constants"]["w0"] - 0.5) < 0.1 for r in report["results"])
    assert report["selection"] == {"minnorm": {"lambda": 0.01}}  # the full run's choice
    printed = capsys.readouterr().out
    assert "erm" in printed and "minnorm" in printed and "param_error" in printed


def test_cli_rejects_unknown_method(tmp_path):
    with pytest.raises(SystemExit):
        experiments.main(["pendulum", "--methods", "erm,adamw", "--json", str(tmp_path / "x.json")])


@pytest.mark.parametrize("flag, value, message", [
    ("--seeds", "0", "`seeds` must be an integer >= 1. Received: seeds=0"),
    ("--epochs", "0", "`epochs` must be None or an integer >= 1. Received: epochs=0"),
    ("--tolerance", "-1", "`tolerance` must be a finite number >= 0. Received: tolerance=-1.0"),
    ("--tolerance", "nan", "Received: tolerance=nan"),
    ("--value", "-0.3", "`value` must be a finite number >= 0. Received: value=-0.3"),
    ("--first-seed", "-1", "`first_seed` must be an integer >= 0. Received: first_seed=-1"),
    ("--threads", "-1", "`threads` must be >= 0. Received: threads=-1"),  # TF aborted
])
def test_cli_rejects_numbers_out_of_range_before_running(tmp_path, capsys, flag, value, message):
    # `--epochs 0` printed untrained constants as results; the others ran
    # or failed with a traceback.
    out = tmp_path / "x.json"
    with pytest.raises(SystemExit):
        experiments.main(["pendulum", flag, value, "--json", str(out)])
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cli_rejects_options_and_outputs_it_could_not_honour_before_running(tmp_path, capsys):
    # These ran the whole experiment (hours in the full configuration) and
    # then failed: a traceback for the options, the report or the export
    # lost for the paths.
    kept = tmp_path / "results"
    kept.mkdir()
    (kept / "notes.txt").write_text("kept")
    out = str(tmp_path / "x.json")
    for argv, message in (
        (["arrhenius", "--architecture", "output", "--json", out],
         "on the systems ['duffing_forcing', 'pendulum'] only"),
        (["pendulum", "--standardize", "--json", out], "on the algebraic tasks"),
        (["arrhenius", "--json", str(tmp_path)], "`--json` must name a file"),
        (["arrhenius", "--json", out, "--export", str(kept)], "holds no SavedModel"),
        (["arrhenius", "--json", out, "--export", ""], "`--export` must not be empty"),
        # A traceback after the runs: a folder named like a file, a path
        # under a file, a report the export would delete, and a number of
        # steps the algebraic tasks cannot pack into epochs.
        (["arrhenius", "--json", out + "/"], "`--json` must name a file"),
        (["arrhenius", "--json", str(kept / "notes.txt" / "x.json")], "a folder where files can be created"),
        (["arrhenius", "--json", str(tmp_path / "served" / "r.json"), "--export", str(tmp_path / "served")],
         "must not be inside the `--export` folder"),
        (["arrhenius", "--json", out, "--export", out], "must not be inside the `--export` folder"),
        (["arrhenius", "--json", out, "--epochs", "50"], "a multiple of 100. Received: epochs=50"),
        # Validation seeds are the training seed + 1000: seed 9000's would
        # be the test set's.
        (["pendulum", "--json", out, "--first-seed", "1000"], "`first_seed + seeds` must be at most 1000"),
    ):
        with pytest.raises(SystemExit):
            experiments.main(argv + ["--methods", "erm", "--quick", "--seeds", "1"])
        assert message in capsys.readouterr().err, argv
    assert not os.path.exists(out) and os.listdir(kept) == ["notes.txt"]
    assert not (tmp_path / "served").exists()
    # A method named twice ran twice and was averaged as two seeds.
    with pytest.raises(SystemExit):
        experiments.main(["arrhenius", "--methods", "erm, erm,l2 ", "--json", out])
    assert "name each method once" in capsys.readouterr().err


def test_run_experiment_rejects_numbers_out_of_range():
    with pytest.raises(ValueError, match=r"Received: epochs=2\.5"):
        experiments.run_experiment("michaelis_menten", ["erm"], 1, quick=True, epochs=2.5)
    with pytest.raises(ValueError, match="Received: seeds=True"):
        experiments.run_experiment("michaelis_menten", ["erm"], True, quick=True)


def test_training_settings_per_method():
    assert methods_lib.training_for("erm", None) == (None, None, 0.0, False)
    assert methods_lib.training_for("physics", None).physics_only
    asam_neural = methods_lib.training_for("asam-neural", 0.5).sam
    assert (asam_neural.perturb, asam_neural.adaptive, asam_neural.adaptive_scope) == ("neural", True, "kernels")
    assert methods_lib.training_for("sam-relative", 0.03).sam.relative
    sam = methods_lib.training_for("sam-neural", 0.3).sam
    assert (sam.rho, sam.perturb, sam.adaptive) == (0.3, "neural", False)
    asam = methods_lib.training_for("asam", 0.5).sam
    assert (asam.rho, asam.perturb, asam.adaptive) == (0.5, "all", True)
    reg = methods_lib.training_for("l2", 1e-3).kernel_regularizer
    np.testing.assert_allclose(float(reg(np.ones((2, 2), "float32"))), 4e-3, rtol=1e-6)
    assert methods_lib.training_for("minnorm", 0.2).penalty == 0.2


def test_selection_prefers_strongest_value_within_tolerance():
    rows = [{"value": 0.03, "val_mse": 1.0e-4}, {"value": 0.3, "val_mse": 1.2e-4},
            {"value": 1.0, "val_mse": 3.0e-4}]
    assert methods_lib.select(rows, 0.0) == 0.03
    assert methods_lib.select(rows, 0.25) == 0.3
    assert methods_lib.select(rows, 2.0) == 1.0
    rows.append({"value": 3.0, "val_mse": float("nan")})
    assert methods_lib.select(rows, 2.0) == 1.0


def _ode_with_constant_correction(bias):
    correction = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    correction.layers[0].set_weights([np.zeros((2, 2), "float32"), np.asarray(bias, "float32")])
    return ODELayer(frictionless_pendulum, [PhysicalConstant("w0", 2.0)], times=np.arange(3) * 0.1,
                    correction=correction)


def test_net_share_against_numpy():
    layer = _ode_with_constant_correction([0.0, 0.5])
    obs = np.random.default_rng(0).uniform(-1, 1, (4, 3, 2)).astype("float32")
    layer(obs[:, 0])
    physics = np.stack([obs[..., 1], -4.0 * np.sin(obs[..., 0])], -1)
    net = np.broadcast_to(np.array([0.0, 0.5]), physics.shape)
    expected = np.sqrt(np.sum(net**2) / np.sum((physics + net) ** 2))
    got = methods_lib.net_share(layer, layer.times, obs)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_correction_penalty_adds_weighted_squared_norm():
    layer = _ode_with_constant_correction([0.3, -0.4])
    y0 = keras.Input((2,))
    trajectory = layer(y0)
    out = methods_lib.CorrectionPenalty(layer, 2.0)(trajectory)
    model = keras.Model(y0, out)
    x = np.zeros((3, 2), "float32")
    np.testing.assert_allclose(model(x), layer(x), rtol=1e-6)
    # ||(0.3, -0.4)||^2 = 0.25 at every state -> 2.0 * 0.25.
    np.testing.assert_allclose(float(sum(model.losses)), 0.5, rtol=1e-5)


def test_sam_recovers_pendulum_frequency_better_than_erm():
    # Quick configuration (100 trajectories, 150 epochs), seed 0. Measured:
    # ERM rel. error 0.46, neural-only SAM (rho = 0.3) 0.24.
    report, _ = experiments.run_experiment("pendulum", ["erm", "sam-neural"], 1, quick=True, log=lambda s: None)
    erm, sam = (r["param_rel_error"] for r in report["results"])
    assert erm > 0.3, erm
    assert sam < 0.75 * erm, (sam, erm)


def test_sam_on_the_correction_recovers_per_episode_frequencies():
    # Pendulum episodes, quick configuration (100 episodes, 300 epochs),
    # seed 0. Measured: ERM rel. error 0.24, SAM with the encoder excluded
    # (rho = 0.3) 0.087.
    report, _ = experiments.run_experiment(
        "pendulum_episodes", ["erm", "sam-correction"], 1, quick=True, log=lambda s: None
    )
    erm, sam = (r["param_rel_error"] for r in report["results"])
    assert erm > 0.15, erm
    assert sam < 0.5 * erm, (sam, erm)


def _load_merge_script():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "merge_results.py"
    spec = importlib.util.spec_from_file_location("merge_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reports_split_over_processes_merge(tmp_path, capsys):
    parts = []
    for seed in (0, 1):
        out = tmp_path / f"part{seed}.json"
        experiments.main(["pendulum", "--methods", "erm", "--seeds", "1", "--first-seed", str(seed),
                          "--quick", "--epochs", "1", "--no-jit", "--json", str(out)])
        parts.append(out)
    merge_results = _load_merge_script()
    merged_path = tmp_path / "merged.json"
    merge_results.main([str(merged_path), *map(str, parts)])
    merged = json.loads(merged_path.read_text())
    # --no-jit: one epoch does not repay XLA's compilation.
    assert merged["config"]["jit"] is False
    assert [(r["method"], r["seed"]) for r in merged["results"]] == [("erm", 0), ("erm", 1)]
    assert merged["complete"] is True and len(merged["commands"]) == 2
    assert "| erm | - |" in capsys.readouterr().out
    other = json.loads(parts[0].read_text())
    other["system"] = "duffing"
    with pytest.raises(ValueError, match="one system"):
        merge_results.merge([merged, other])


def test_forced_pendulum_cli_smoke(tmp_path):
    out = tmp_path / "fp.json"
    experiments.main(["forced_pendulum", "--methods", "sam-neural", "--seeds", "1", "--quick",
                      "--epochs", "1", "--no-jit", "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    # Per-episode w0 is scored against the test episodes' true values.
    assert 0.785 <= row["true_constants"]["w0_mean"] <= 3.14
    assert np.isfinite(row["param_error"]) and row["param_error"] > 0
    # (net_share may exceed 1 when physics and network cancel.)
    assert np.isfinite(row["test_mse"]) and row["net_share"] > 0.0


# -- algebraic tasks, sam-auto, architectures ---------------------------------

from keras_hybrid.experiments import algebraic as algebraic_tasks  # noqa: E402
from keras_hybrid.experiments import runner  # noqa: E402


def test_algebraic_cli_reports_constants_error_and_mse(tmp_path):
    out = tmp_path / "mm.json"
    experiments.main(["michaelis_menten", "--methods", "physics,minnorm", "--seeds", "1", "--quick",
                      "--epochs", "100", "--json", str(out)])
    report = json.loads(out.read_text())
    physics, minnorm = report["results"]
    assert physics["true_constants"] == {"Vmax": 1.0, "Km": 0.3}
    for row in (physics, minnorm):
        est = row["constants"]
        expected = np.mean([(est["Vmax"] - 1.0) ** 2, (est["Km"] - 0.3) ** 2])
        np.testing.assert_allclose(row["param_mse"], expected, rtol=1e-5)
    assert physics["net_share"] == 0.0 and minnorm["net_share"] > 0.0
    # Each run says how many of its steps were taken as labelled.
    assert minnorm["steps"] == 100 and minnorm["skipped_steps"] == 0 and "sam_fallbacks" not in minnorm
    with pytest.raises(ValueError, match="standardize"):
        experiments.run_experiment("pendulum", ["erm"], 1, quick=True, standardize=True)


def test_standardized_correction_is_saved_and_restored(tmp_path):
    task = algebraic_tasks.ArrheniusTask()
    cfg = dict(task.config(True), standardize=True)
    data = task.data(0, cfg)
    model, _ = task.build_from_data(cfg, methods_lib.training_for("erm", None), 0, data)
    norm = model.get_layer("correction").get_layer("standardize")
    x = data["train"][0]
    # Adapted to the raw temperatures (270-630 K): zero mean, unit variance.
    np.testing.assert_allclose(np.ravel(norm.mean), [x.mean()], rtol=1e-5)
    np.testing.assert_allclose(np.ravel(norm.variance), [x.var()], rtol=1e-4)
    standardized = norm(x)
    np.testing.assert_allclose([np.mean(standardized), np.std(standardized)], [0.0, 1.0], atol=1e-4)
    path = tmp_path / "arrhenius.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)
    np.testing.assert_allclose(
        np.ravel(restored.get_layer("correction").get_layer("standardize").mean), [x.mean()], rtol=1e-5)


def test_sam_auto_is_at_least_as_good_as_plain_training():
    # First-order kinetics, 200 full-batch steps, seed 0, radii (0, 0.01)
    # and the physics part alone (three fits). The radius-0 row of the path
    # is plain training with the same data, seed and steps; sam-auto may
    # choose it, so the margin is an absolute 0.02 on the relative error.
    task = algebraic_tasks.FirstOrderKineticsTask()
    task.auto_rhos = (0.0, 0.01)
    cfg = task.config(True)
    data = task.data(0, cfg)
    result, _ = runner.run_one(task, cfg, data, "sam-auto", None, 0, epochs=200)
    path = result["radius_path"]
    plain = next(r for r in path["rows"] if r["rho"] == 0.0)["constants"]
    _, plain_rel, _ = experiments.tasks._errors(plain, task.true_constants)
    assert result["hyperparameter"]["rho"] == path["chosen"] in (0.0, 0.01)
    assert result["param_rel_error"] <= plain_rel + 0.02, (result["param_rel_error"], plain_rel)
    # Never worse on validation than the physics part alone.
    assert result["val_mse"] <= path["physics_only"]["val_loss"] * 1.0001
    # The paired rule, on the 15 validation points' own losses (signed
    # rank: 15 samples resolve 0.05 for the one comparison).
    assert (path["rule_used"], path["test"], path["level"]) == ("paired", "signed rank", 0.05)
    assert all(len(r["val_losses"]) == cfg["n_val"] for r in path["rows"])
    assert path["chosen"] == max(path["eligible"])
    # The whole path is kept, with each fit's validation and test MSE, so
    # that a selection rule can be re-applied to it offline.
    for row in path["rows"] + [path["physics_only"]]:
        assert np.isfinite(row["val_mse"]) and np.isfinite(row["test_mse"]) and np.isfinite(row["val_se"])
    chosen_row = next(r for r in path["rows"] if r["rho"] == path["chosen"])
    np.testing.assert_allclose(chosen_row["test_mse"], result["test_mse"], rtol=1e-6)
    restored = RadiusPath.from_dict(json.loads(json.dumps(path)))
    assert restored.chosen == path["chosen"] and restored.rhos == [0.0, 0.01]


@pytest.mark.parametrize("architecture", ["output", "nonadditive"])
def test_pendulum_architectures_reduce_to_physics_with_zero_network(architecture):
    # Output-level architectures: with the network's weights at zero the
    # observation is the physics trajectory (additive: + 0; non-additive:
    # times 1 + 0), which the physics-only reference of radius_path needs.
    task = experiments.PendulumTask()
    cfg = dict(task.config(True), architecture=architecture)
    times, x, _ = experiments.tasks.pendulum.simulate(4, seed=0)
    model, _ = task.build(cfg, methods_lib.training_for("erm", None), 0, times)
    net = model.get_layer("net")
    random_output = np.asarray(model(x))
    for v in net.trainable_variables:
        v.assign(np.zeros(v.shape, "float32"))
    physics = np.asarray(model._physics_output(x))
    assert physics.shape == random_output.shape == (4, len(times), 2)
    np.testing.assert_allclose(np.asarray(model(x)), physics, atol=1e-6)
    assert np.max(np.abs(random_output - physics)) > 1e-3


def test_minnorm_is_not_applicable_to_the_nonadditive_pendulum():
    report, _ = experiments.run_experiment("pendulum", ["minnorm"], 1, quick=True, log=lambda s: None,
                                           architecture="nonadditive")
    assert report["results"] == [] and report["not_applicable"] == ["minnorm"]
    assert report["config"]["architecture"] == "nonadditive"
    with pytest.raises(ValueError, match="architecture='output'"):
        experiments.run_experiment("duffing", ["erm"], 1, quick=True, architecture="output")


# -- pendulum from rendered frames --------------------------------------------

from keras_hybrid.systems import pendulum_images  # noqa: E402


def test_blob_renderer_layer_matches_the_simulator():
    renderer = experiments.tasks.BlobRenderer(16, length=pendulum_images.LENGTH, width=pendulum_images.BLOB_WIDTH)
    theta = np.linspace(-2.0, 2.0, 6).astype("float32")
    states = np.stack([theta, np.ones_like(theta)], -1)[None]  # (1, 6, 2)
    frames = np.asarray(renderer(states))
    assert frames.shape == (1, 6, 256)
    np.testing.assert_allclose(frames[0], pendulum_images.render(theta).reshape(6, 256), atol=1e-5)


def test_soft_argmax_keypoint_is_the_bob_position():
    theta = np.array([-1.2, 0.0, 0.7, 2.0])
    frames = pendulum_images.render(theta, size=16, width=0.1).reshape(4, 256).astype("float32")
    # Sharp: the brightest pixel, within half a pixel pitch (1/16) of the bob.
    keypoints = np.asarray(experiments.tasks.SoftArgmax(16, sharpness=50.0)(frames))
    np.testing.assert_allclose(keypoints, np.stack(pendulum_images.bob_position(theta), -1), atol=1 / 16 + 1e-4)
    # Flat: the mean of the pixel centres, the pivot.
    flat = np.asarray(experiments.tasks.SoftArgmax(16, sharpness=1e-4)(frames))
    np.testing.assert_allclose(flat, 0.0, atol=1e-4)


def test_pendulum_images_cli_smoke_and_model_round_trip(tmp_path):
    out = tmp_path / "images.json"
    experiments.main(["pendulum_images", "--methods", "minnorm,sam-correction", "--seeds", "1", "--quick",
                      "--epochs", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["complete"] is True and report["config"]["n_steps"] == 25
    assert [r["method"] for r in report["results"]] == ["minnorm", "sam-correction"]
    for row in report["results"]:
        assert RESULT_KEYS <= set(row) and row["true_constants"] == {"w0": 1.0}
        w0 = row["constants"]["w0"]
        assert np.isfinite(w0) and abs(w0 - 0.5) < 0.1  # one epoch from the initial 0.5
        np.testing.assert_allclose(row["param_rel_error"], abs(w0 - 1.0), rtol=1e-6)
        assert np.isfinite(row["test_mse"]) and row["net_share"] > 0 and -1 <= row["angle_corr"] <= 1
    # The model (encoder, ODE, renderer) saves and loads.
    task = experiments.PendulumImagesTask()
    cfg = task.config(True)
    data = task.data(0, dict(cfg, n_train=4, n_val=2, n_test=2))
    x, y = data["test"]
    assert x.shape == (2, task.n_input_frames, 256) and y.shape == (2, 25, 256)
    model, _ = task.build(cfg, methods_lib.training_for("erm", None), 0, data["times"])
    path = tmp_path / "images.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)


def test_pendulum_images_quick_cli_writes_the_json(tmp_path):
    # The command CI runs (about 1.5 min on 2 shared cores).
    out = tmp_path / "images_quick.json"
    experiments.main(["pendulum_images", "--methods", "erm,sam-auto", "--seeds", "1", "--quick",
                      "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["system"] == "pendulum_images" and report["complete"] is True and report["quick"] is True
    erm, auto = report["results"]
    assert (erm["method"], auto["method"]) == ("erm", "sam-auto")
    rows = auto["radius_path"]["rows"]
    assert [r["rho"] for r in rows] == list(experiments.PendulumImagesTask.auto_rhos)
    assert auto["hyperparameter"]["rho"] == auto["radius_path"]["chosen"] in experiments.PendulumImagesTask.auto_rhos
    # No physics-only reference: the physics part needs the encoder and decoder.
    assert auto["radius_path"]["physics_only"] is None
    for row in (erm, auto):
        assert RESULT_KEYS <= set(row)
        assert np.isfinite(row["constants"]["w0"]) and np.isfinite(row["val_mse"])
        # Below the training set's mean frame (test MSE 0.030; a blank
        # frame 0.072, the pixel noise 0.0025).
        assert row["test_mse"] < 0.027, row["test_mse"]


def test_image_layers_reject_bad_arguments():
    with pytest.raises(ValueError, match="size=2"):
        experiments.tasks.SoftArgmax(2)
    with pytest.raises(ValueError, match="sharpness=0.0"):
        experiments.tasks.SoftArgmax(16, sharpness=0.0)
    with pytest.raises(ValueError, match="length=1.5"):
        experiments.tasks.BlobRenderer(16, length=1.5)
    with pytest.raises(ValueError, match="width=-0.1"):
        experiments.tasks.BlobRenderer(16, width=-0.1)


def test_duffing_forcing_data_shapes_and_physics_method():
    task = experiments.DuffingForcingTask()
    cfg = dict(task.config(True), n_train=4, n_val=3, n_test=2)
    data = task.data(0, cfg)
    x, y = data["train"]
    assert x.shape == (4, 2) and y.shape == (4, 50, 2) and data["times"].shape == (50,)
    np.testing.assert_array_equal(x, y[:, 0])
    assert data["val"][1].shape == (3, 50, 2) and data["test"][1].shape == (2, 50, 2)
    model, ode_layer = task.build(cfg, methods_lib.training_for("physics", None), 0, data["times"])
    # The physics method has no network: only alpha, beta, delta train.
    assert ode_layer.correction is None
    assert len(model.trainable_variables) == 3


def test_duffing_forcing_cli_fits_one_epoch_and_marks_minnorm_not_applicable(tmp_path):
    # The CLI once (each ODE fit costs a minute of tracing on 2 cores); the
    # other architectures are built and checked below without fitting.
    out = tmp_path / "d.json"
    experiments.main(["duffing_forcing", "--architecture", "nonadditive", "--methods", "erm,minnorm",
                      "--seeds", "1", "--quick", "--no-sweep", "--epochs", "1", "--no-jit", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["config"]["architecture"] == "nonadditive"
    (row,) = report["results"]
    assert row["method"] == "erm" and sorted(row["constants"]) == ["alpha", "beta", "delta"]
    assert all(np.isfinite(v) and v > 0 for v in row["constants"].values())
    # One epoch moved the constants away from their initial guess 0.5.
    assert any(abs(v - 0.5) > 1e-4 for v in row["constants"].values())
    assert np.isfinite(row["val_mse"]) and row["net_share"] > 0
    # Min-norm penalizes an additive correction only.
    assert report["not_applicable"] == ["minnorm"]


@pytest.mark.parametrize("architecture", ["vector_field", "output", "nonadditive"])
def test_duffing_forcing_architectures_predict_trajectories(architecture):
    task = experiments.DuffingForcingTask()
    cfg = dict(task.config(True), architecture=architecture, n_train=3, n_val=2, n_test=2)
    data = task.data(0, cfg)
    x, y = data["train"]
    model, _ = task.build(cfg, methods_lib.training_for("minnorm", 0.01), 0, data["times"])
    pred = np.asarray(model(x))
    assert pred.shape == y.shape == (3, 50, 2) and np.all(np.isfinite(pred))
    assert sorted(model.physical_constants()) == ["alpha", "beta", "delta"]
    # Min-norm's penalty exists exactly where the correction is additive.
    assert (len(model.losses) > 0) == (architecture != "nonadditive")


def test_architecture_on_a_system_without_architectures_is_an_error():
    for system in ("duffing", "michaelis_menten"):
        with pytest.raises(ValueError, match=r"on the systems \['duffing_forcing', 'pendulum'\] only"):
            experiments.run_experiment(system, ["erm"], 1, quick=True, architecture="vector_field")
    with pytest.raises(ValueError, match="architecture='convolutional'"):
        experiments.run_experiment("duffing_forcing", ["erm"], 1, quick=True, architecture="convolutional")
    with pytest.raises(SystemExit):
        experiments.main(["duffing_forcing", "--architecture", "convolutional", "--json", "x.json"])


def test_physics_method_runs_only_where_the_network_can_be_dropped():
    # Elsewhere `physics` would silently be plain training.
    systems = experiments.SYSTEMS
    for name in ("duffing", "reaction_diffusion", "pendulum_episodes", "forced_pendulum", "pendulum_images"):
        assert not systems[name]().applicable("physics", {}), name
    for name in ("pendulum", "duffing_forcing", "michaelis_menten", "arrhenius", "first_order_kinetics"):
        assert systems[name]().applicable("physics", {}), name
    report, _ = experiments.run_experiment("duffing", ["physics"], 1, quick=True, log=lambda s: None)
    assert report["results"] == [] and report["not_applicable"] == ["physics"]


def test_a_cli_run_where_every_method_is_not_applicable_fails(tmp_path, capsys):
    # It exited 0 with no results: a script would have read it as success.
    out = tmp_path / "none.json"
    with pytest.raises(SystemExit) as exit_info:
        experiments.main(["duffing", "--methods", "physics", "--seeds", "1", "--quick", "--no-sweep",
                          "--json", str(out)])
    assert exit_info.value.code == 2
    assert "none of the methods ['physics'] applies to duffing" in capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["complete"] and report["not_applicable"] == ["physics"]


def test_jit_compile_must_be_a_bool_or_none():
    with pytest.raises(ValueError, match="jit_compile='no'"):
        experiments.run_experiment("pendulum", ["erm"], 1, quick=True, jit_compile="no")


def test_the_json_report_is_written_whole_or_not_at_all(tmp_path):
    from keras_hybrid.experiments.cli import write_json

    path = tmp_path / "out.json"
    write_json(str(path), {"sweep": [], "complete": False})
    assert json.loads(path.read_text()) == {"sweep": [], "complete": False}
    # A value JSON cannot hold fails half-way through `json.dump`: the
    # earlier report stays as it was, and no partial file is left.
    with pytest.raises(TypeError):
        write_json(str(path), {"sweep": [1, 2], "model": object()})
    assert json.loads(path.read_text()) == {"sweep": [], "complete": False}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
    # The report gets a new file's usual permissions (the temporary file's
    # were private to the user, and replaced those of an earlier report).
    mask = os.umask(0o022)
    try:
        path.chmod(0o644)
        write_json(str(path), {"sweep": []})
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644


def test_table_notes_runs_that_skipped_steps_or_fell_back_from_sam():
    from keras_hybrid.experiments.tables import format_table

    row = dict(param_error=0.1, param_rel_error=0.1, param_mse=0.01, test_mse=0.2, val_mse=0.2,
               net_share=0.5, seconds=1.0, hyperparameter={"rho": 1e30}, steps=400)
    report = {"results": [dict(row, method="sam", seed=0, sam_fallbacks=400, skipped_steps=0),
                          dict(row, method="erm", seed=0, hyperparameter={}, skipped_steps=0)],
              "not_applicable": ["minnorm"], "config": {}}
    table = format_table(report)
    assert "note: sam: 400 of 400 steps took the plain gradient" in table
    assert "note: erm" not in table and "minnorm       n/a (not defined for this system)" in table


def test_report_cli_names_bad_files_and_methods(tmp_path, capsys):
    from keras_hybrid.experiments import report as report_cli

    row = dict(param_error=0.1, param_rel_error=0.1, param_mse=0.01, test_mse=0.2, val_mse=0.2,
               net_share=0.5, seconds=1.0, hyperparameter={}, seed=0)
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"system": "pendulum", "config": {"architecture": "nonadditive"},
                                "results": [dict(row, method="erm"), dict(row, method="l2")],
                                "not_applicable": ["minnorm"]}))
    report_cli.main(["--methods", "erm, l2,minnorm", str(path)])
    out = capsys.readouterr().out
    assert "| erm | l2 | minnorm |" in out and "| n/a |" in out and "| - |" not in out
    for argv, message in ((["--methods", "erm,bogus", str(path)], "`--methods` must name methods"),
                          ([str(tmp_path)], "cannot read the report"),
                          ([str(tmp_path / "missing.json")], "cannot read the report")):
        with pytest.raises(SystemExit):
            report_cli.main(argv)
        assert message in capsys.readouterr().err
