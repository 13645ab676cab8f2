"""Write neural_tangents_reference.json: NNGP/NTK of stax MLPs, the reference for tests/test_infinite.py.

Not run by the tests (it needs JAX). To refresh, in a separate virtual environment:
    pip install neural-tangents==0.6.5 jax==0.4.30 jaxlib==0.4.30 tf2jax==0.3.6 "numpy<2" "scipy<1.14"
    python tests/data/make_neural_tangents_reference.py
"""

import itertools
import json
from pathlib import Path

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)
from neural_tangents import stax  # noqa: E402

ACTIVATIONS = {
    "relu": stax.Relu,
    "erf": stax.Erf,
    "identity": stax.Identity,
    "abs": stax.Abs,
    "leaky_relu": lambda: stax.LeakyRelu(0.1),
}


def network(depth, activation, W_std, b_std, parameterization, width):
    layers = []
    for _ in range(depth):
        layers += [stax.Dense(width, W_std, b_std, parameterization=parameterization), ACTIVATIONS[activation]()]
    layers.append(stax.Dense(1, W_std, b_std, parameterization=parameterization))
    return stax.serial(*layers)


def main():
    rng = np.random.RandomState(2026)
    X = rng.randn(5, 3)
    X[4] = X[1]  # a duplicate point
    Z = rng.randn(4, 3)
    cases = []
    for activation, depth, (W_std, b_std), parameterization in itertools.product(
        ACTIVATIONS, (1, 3), ((1.0, 0.0), (1.5, 0.2), (0.8, None)), ("ntk", "standard")
    ):
        width = 256
        kernel_fn = network(depth, activation, W_std, b_std, parameterization, width)[2]
        for name, second in (("XX", None), ("XZ", Z)):
            k = kernel_fn(X, second, ("nngp", "ntk"))
            cases.append({
                "activation": activation, "depth": depth, "W_std": W_std, "b_std": b_std,
                "parameterization": parameterization, "width": width, "negative_slope": 0.1,
                "pair": name, "nngp": np.asarray(k.nngp).tolist(), "ntk": np.asarray(k.ntk).tolist(),
            })
    out = {"neural_tangents": "0.6.5", "X": X.tolist(), "Z": Z.tolist(), "cases": cases}
    path = Path(__file__).with_name("neural_tangents_reference.json")
    path.write_text(json.dumps(out))
    print(f"wrote {len(cases)} cases to {path}")


if __name__ == "__main__":
    main()
