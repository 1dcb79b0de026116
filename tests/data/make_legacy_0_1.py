"""Writes the fixtures `legacy_0_1.keras` and `legacy_0_1.weights.h5`.

They were written by keras_hybrid 0.1 (commit 8d0c5e4, before `scale` and
`parameterization` existed): run from a checkout of that commit,
`python tests/data/make_legacy_0_1.py tests/data/legacy_0_1`.
"""
import sys, numpy as np, keras
import keras_hybrid as kh

@keras.saving.register_keras_serializable(package="keras_hybrid_tests")
def legacy_law(x, c):
    return c["k"] * x + c["A"] + c["b"] * x * x

inputs = keras.Input((1,))
layer = kh.ScientificLayer(legacy_law, [
    kh.PhysicalConstant("k", 2.0, unit="1/s", constraint="positive"),
    kh.PhysicalConstant("A", 4.0, unit="V"),
    kh.PhysicalConstant("b", 1.5, constraint=(0.0, 2.0)),
], name="law")
model = keras.Model(inputs, layer(inputs))
layer._raw["k"].assign(1.7)    # softplus(1.7)
layer._raw["A"].assign(-3.25)  # identity
layer._raw["b"].assign(0.4)    # 2 * sigmoid(0.4)
print(kh.physical_constants(model))
model.save(sys.argv[1] + ".keras")
model.save_weights(sys.argv[1] + ".weights.h5")
