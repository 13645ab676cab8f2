"""ntklib's layers against neural-tangents 0.6.5, number by number.

tests/data/neural_tangents_stax_reference.json holds NNGP and NTK matrices that neural-tangents'
``kernel_fn`` computed for 64 networks (dense, convolutional 1-D and 2-D with every padding and
strides, average and global pooling, Flatten, residual blocks, LayerNorm, all activations, both
parameterisations), X-X and Z-X, in float64; tests/data/make_neural_tangents_stax_reference.py
wrote it (it needs JAX, so it does not run here). The networks are stored in a neutral format
that this file turns into ntklib layers; the inputs are stored channels-first (the generator
transposed them to neural-tangents' NHWC).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import ntklib as nk

REFERENCE = json.loads((Path(__file__).parent / "data" / "neural_tangents_stax_reference.json").read_text())
ACTIVATIONS = {
    "Relu": nk.Relu,
    "Abs": nk.Abs,
    "Erf": nk.Erf,
    "Gelu": nk.Gelu,
    "Sin": lambda: nk.Elementwise(torch.sin),
    "Tanh": lambda: nk.Elementwise(torch.tanh),
}


def build(spec) -> nk.layers.Layer:
    """A layer from the neutral description [name, options]."""
    name, options = spec
    if name == "serial":
        return nk.serial(*map(build, options))
    if name == "parallel":
        return nk.parallel(*map(build, options))
    if name == "Dense":
        return nk.Dense(options["out"], options["W_std"], options["b_std"], options["parameterization"])
    if name == "Conv":
        return nk.Conv(options["out"], tuple(options["filter"]), stride=tuple(options["strides"]),
                       padding=options["padding"], W_std=options["W_std"], b_std=options["b_std"],
                       parameterization=options["parameterization"])  # fmt: skip
    if name == "AvgPool":
        # neural-tangents' strides=None means 1; ntklib's stride=None means the window (torch's).
        stride = tuple(options["strides"]) if options["strides"] else 1
        return nk.AvgPool(tuple(options["window"]), stride=stride, padding=options["padding"])
    if name == "LeakyRelu":
        return nk.LeakyRelu(options["slope"])
    if name == "FanOut":
        return nk.FanOut(options["n"])
    simple = {"GlobalAvgPool": nk.GlobalAvgPool, "Flatten": nk.Flatten, "LayerNorm": nk.LayerNorm,
              "Identity": nk.Identity, "FanInSum": nk.FanInSum, **ACTIVATIONS}  # fmt: skip
    return simple[name]()


CASES = {case["name"]: case for case in REFERENCE["cases"]}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_neural_tangents(name):
    case = CASES[name]
    net = build(["serial", case["layers"]])
    X = torch.tensor(case["X"], dtype=torch.float64)
    Z = torch.tensor(case["Z"], dtype=torch.float64)
    for pair, (A, B) in {"XX": (X, None), "ZX": (Z, X)}.items():
        ours = net.kernels(A, B)
        for get in ("nngp", "ntk"):
            reference = torch.tensor(case[pair][get], dtype=torch.float64)
            scale = float(reference.abs().max())
            torch.testing.assert_close(getattr(ours, get), reference, rtol=1e-7, atol=1e-7 * scale,
                                       msg=lambda m: f"{name} {pair} {get}: {m}")  # fmt: skip
