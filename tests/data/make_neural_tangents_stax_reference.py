"""Write neural_tangents_stax_reference.json: NNGP/NTK of stax networks built from layers.

The reference numbers for ntklib's compositional layers (Dense, Conv, pooling, LayerNorm,
branching, activations). Not run by the tests (it needs JAX). To refresh, in a separate
virtual environment outside the repository:
    python3 -m venv /work/ntvenv
    /work/ntvenv/bin/pip install "jax[cpu]==0.4.25" "jaxlib==0.4.25" neural-tangents==0.6.5 "numpy<2"
    /work/ntvenv/bin/python tests/data/make_neural_tangents_stax_reference.py

Each case holds a neutral, JSON-serialisable architecture: a list of layers, each layer a
list [name, {options}] (or ["parallel", [layer, ...]] / ["serial", [layer, ...]]):
    ["Dense", {"out", "W_std", "b_std" (null = no bias), "parameterization"}]
    ["Conv", {"out", "filter", "strides", "padding", "W_std", "b_std", "parameterization"}]
    ["Relu"|"Abs"|"Erf"|"Gelu"|"Sin"|"Tanh", {}], ["LeakyRelu", {"slope"}]
    ["AvgPool", {"window", "strides" (null = NT's default: stride 1 per axis), "padding"}]
    ["GlobalAvgPool"|"Flatten"|"LayerNorm"|"Identity"|"FanInSum", {}], ["FanOut", {"n"}]
Inputs X (n, ...) and Z (m, ...) are stored in ntklib's layout: vectors (n, d), images
channels-first (n, C, H, W) or (n, C, L); they are transposed to NT's NHWC / NWC here.
"XX" holds kernel_fn(X, None), "ZX" holds kernel_fn(Z, X): matrices (n, n) and (m, n).
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
import neural_tangents as nt
from neural_tangents import stax

TANH_DEGREE = 1000  # Gauss-Hermite points for tanh (error ~ exp(-c sqrt(deg))); see check_tanh_degree


CHECK_DEGREES = (1200, 1500)


def tanh_layer(degree=TANH_DEGREE):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ElementwiseNumerical warns on every construction
        return stax.ElementwiseNumerical(jnp.tanh, deg=degree, df=lambda x: 1 - jnp.tanh(x) ** 2)


def to_stax(layer, tanh_degree=TANH_DEGREE):
    """One neutral layer description -> an (init_fn, apply_fn, kernel_fn) triple."""
    name, opts = layer
    if name == "serial":
        return stax.serial(*(to_stax(sub, tanh_degree) for sub in opts))
    if name == "parallel":
        return stax.parallel(*(to_stax(sub, tanh_degree) for sub in opts))
    if name == "Dense":
        return stax.Dense(opts["out"], opts["W_std"], opts["b_std"], parameterization=opts["parameterization"])
    if name == "Conv":
        return stax.Conv(
            opts["out"], tuple(opts["filter"]), tuple(opts["strides"]), opts["padding"].upper(),
            opts["W_std"], opts["b_std"], parameterization=opts["parameterization"],
        )  # default dimension_numbers: NHWC / HWIO (2-D), NAC / AIO (1-D): channels last
    if name == "AvgPool":
        strides = None if opts["strides"] is None else tuple(opts["strides"])
        return stax.AvgPool(tuple(opts["window"]), strides, opts["padding"].upper())  # normalize_edges=False
    simple = {
        "Relu": stax.Relu, "Abs": stax.Abs, "Erf": stax.Erf, "Identity": stax.Identity,
        "GlobalAvgPool": stax.GlobalAvgPool, "Flatten": stax.Flatten, "FanInSum": stax.FanInSum,
        "LayerNorm": stax.LayerNorm,  # axis=-1: features, or channels in NHWC; eps=1e-12
        "Gelu": lambda: stax.Gelu(approximate=False),
        "Sin": lambda: stax.Sin(a=1.0, b=1.0, c=0.0),
        "Tanh": lambda: tanh_layer(tanh_degree),
    }
    if name in simple:
        return simple[name]()
    if name == "LeakyRelu":
        return stax.LeakyRelu(opts["slope"])
    if name == "FanOut":
        return stax.FanOut(opts["n"])
    raise ValueError(f"unknown layer {name!r}")


def to_nt_layout(x):
    """Channels-first (n, C, *spatial) -> NT's channels-last (n, *spatial, C); vectors unchanged."""
    return x if x.ndim == 2 else np.moveaxis(x, 1, -1)


def kernels(layers, X, Z, tanh_degree=TANH_DEGREE):
    kernel_fn = to_stax(["serial", layers], tanh_degree)[2]
    Xn, Zn = to_nt_layout(X), to_nt_layout(Z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FanIn's "assume independent inputs" warning
        out = {}
        for pair, (a, b) in {"XX": (Xn, None), "ZX": (Zn, Xn)}.items():
            k = kernel_fn(a, b, ("nngp", "ntk"))
            out[pair] = {"nngp": np.asarray(k.nngp), "ntk": np.asarray(k.ntk)}
    return out


# ---------------------------------------------------------------- architectures


def dense(out, p, W_std=1.5, b_std=0.1):
    return ["Dense", {"out": out, "W_std": W_std, "b_std": b_std, "parameterization": p}]


def conv(out, filt, p, padding="same", strides=None, W_std=1.5, b_std=0.1):
    strides = strides or [1] * len(filt)
    return ["Conv", {"out": out, "filter": list(filt), "strides": list(strides), "padding": padding,
                     "W_std": W_std, "b_std": b_std, "parameterization": p}]


def act(name, **opts):
    return [name, opts]


def avgpool(window, strides, padding):
    return ["AvgPool", {"window": list(window), "strides": strides, "padding": padding}]


def mlp_cases(p):
    w = 8  # hidden width (ignored by "ntk" kernels; sets the NTK scale under "standard")
    acts = {
        "relu": act("Relu"), "gelu": act("Gelu"), "erf": act("Erf"), "abs": act("Abs"),
        "leaky_relu": act("LeakyRelu", slope=0.2), "sin": act("Sin"), "tanh": act("Tanh"),
    }
    cases = {
        "mlp_relu_gelu": [dense(w, p), act("Relu"), dense(w, p), act("Gelu"), dense(1, p)],
    }
    for name, a in acts.items():
        cases[f"mlp_{name}"] = [dense(w, p), a, dense(w, p, W_std=1.2, b_std=0.3), a, dense(1, p)]
    cases["mlp_relu_no_bias"] = [dense(w, p, b_std=None), act("Relu"), dense(w, p, b_std=None),
                                 act("Relu"), dense(1, p, b_std=None)]
    # NT's LayerNorm needs a Gaussian input: after an affine layer, before the activation.
    cases["mlp_layernorm"] = [dense(w, p), act("LayerNorm"), act("Relu"), dense(w, p),
                              act("LayerNorm"), act("Erf"), dense(1, p)]
    # Pre-activation residual block: both FanInSum branches Gaussian (identity of a Dense output,
    # and a branch ending in Dense). The post-ReLU form raises in NT (see nt_findings.md).
    cases["mlp_residual"] = [
        dense(w, p), ["FanOut", {"n": 2}],
        ["parallel", [["serial", [act("Relu"), dense(w, p, W_std=1.2)]], ["Identity", {}]]],
        ["FanInSum", {}], act("Relu"), dense(1, p)]
    # Two Dense branches on a post-ReLU input (independent weights: FanInSum adds kernels).
    cases["mlp_two_dense_branches"] = [
        dense(w, p), act("Relu"), ["FanOut", {"n": 2}],
        ["parallel", [["serial", [dense(w, p), act("Relu"), dense(w, p, W_std=0.8)]],
                      dense(w, p, W_std=1.1, b_std=None)]],
        ["FanInSum", {}], act("Relu"), dense(1, p)]
    return cases


def conv2d_cases(p):
    c = 8 if p == "standard" else 4
    relu = act("Relu")
    gap, flat = ["GlobalAvgPool", {}], ["Flatten", {}]
    cases = {
        "conv_relu_gap": [conv(c, (3, 3), p), relu, conv(c, (3, 3), p), relu, gap, dense(1, p)],
        "conv_relu_flatten": [conv(c, (3, 3), p), relu, conv(c, (3, 3), p), relu, flat, dense(1, p)],
        "conv_valid_stride22": [conv(c, (3, 3), p, "valid", (2, 2)), relu, conv(c, (3, 3), p),
                                relu, gap, dense(1, p)],
        "conv_valid_stride21": [conv(c, (3, 3), p, "valid", (2, 1)), relu,
                                conv(c, (2, 2), p, "valid"), relu, flat, dense(1, p)],
        "conv_circular": [conv(c, (3, 3), p, "circular"), relu, conv(c, (3, 2), p, "circular"),
                          relu, flat, dense(1, p)],
        "conv_circular_stride21": [conv(c, (3, 2), p, "circular", (2, 1)), relu,
                                   conv(c, (3, 3), p, "circular"), relu, flat, dense(1, p)],
        "conv_filter32": [conv(c, (3, 2), p), relu, conv(c, (2, 3), p, "valid"), relu, flat,
                          dense(1, p)],
        "conv_filter_even_same": [conv(c, (2, 4), p), relu, conv(c, (4, 2), p, strides=(2, 1)),
                                  relu, flat, dense(1, p)],
        "avgpool_valid_default_strides": [conv(c, (3, 3), p), relu, avgpool((2, 2), None, "valid"),
                                          flat, dense(1, p)],
        "avgpool_valid_stride22": [conv(c, (3, 3), p), relu, avgpool((2, 3), [2, 2], "valid"),
                                   flat, dense(1, p)],
        "avgpool_same_stride1": [conv(c, (3, 3), p), relu, avgpool((3, 2), [1, 1], "same"),
                                 flat, dense(1, p)],
        "avgpool_same_window22": [conv(c, (3, 3), p), relu, avgpool((2, 2), [1, 1], "same"),
                                  conv(c, (3, 3), p), relu, gap, dense(1, p)],
        "avgpool_circular": [conv(c, (3, 3), p), relu, avgpool((2, 3), None, "circular"),
                             flat, dense(1, p)],
        "conv_residual": [
            conv(c, (3, 3), p), ["FanOut", {"n": 2}],
            ["parallel", [["serial", [relu, conv(c, (3, 3), p, W_std=1.2)]], ["Identity", {}]]],
            ["FanInSum", {}], relu, gap, dense(1, p)],
        "conv_layernorm": [conv(c, (3, 3), p), act("LayerNorm"), relu, conv(c, (3, 3), p),
                           act("LayerNorm"), relu, gap, dense(1, p)],
        "conv_gelu": [conv(c, (3, 3), p), act("Gelu"), conv(c, (3, 3), p), act("Gelu"), gap,
                      dense(1, p)],
        "conv_erf": [conv(c, (3, 3), p), act("Erf"), conv(c, (3, 3), p), act("Erf"), flat,
                     dense(1, p)],
        "conv_no_bias": [conv(c, (3, 3), p, b_std=None), relu, conv(c, (3, 3), p, b_std=None),
                         relu, gap, dense(1, p, b_std=None)],
    }
    return cases


def conv1d_cases(p):
    c = 8 if p == "standard" else 4
    relu = act("Relu")
    return {
        "conv1d_gap": [conv(c, (3,), p), relu, conv(c, (2,), p, "valid", (2,)), relu,
                       ["GlobalAvgPool", {}], dense(1, p)],
        "conv1d_flatten": [conv(c, (3,), p), relu, conv(c, (2,), p, "valid", (2,)), relu,
                           ["Flatten", {}], dense(1, p)],
    }


def inputs(shape, seed):
    rng = np.random.RandomState(seed)
    X = rng.randn(4, *shape)
    X[3] = X[1]  # a duplicated point
    Z = rng.randn(3, *shape)
    return X, Z


def check_tanh_degree(cases):
    """Largest change of any tanh-case kernel entry when the quadrature degree grows."""
    worst = 0.0
    for case in cases:
        if '"Tanh"' not in json.dumps(case["layers"]):
            continue
        X, Z = np.array(case["X"]), np.array(case["Z"])
        for degree in CHECK_DEGREES:
            other = kernels(case["layers"], X, Z, degree)
            for pair in ("XX", "ZX"):
                for kind in ("nngp", "ntk"):
                    diff = np.abs(other[pair][kind] - np.array(case[pair][kind])).max()
                    worst = max(worst, float(diff))
    return worst


def main():
    groups = [
        ((5,), 11, mlp_cases),
        ((2, 6, 5), 12, conv2d_cases),
        ((3, 7), 13, conv1d_cases),
    ]
    cases = []
    for shape, seed, make in groups:
        X, Z = inputs(shape, seed)
        for p in ("ntk", "standard"):
            for name, layers in make(p).items():
                k = kernels(layers, X, Z)
                case = {"name": f"{name}_{p}", "input_shape": list(shape), "layers": layers,
                        "X": X.tolist(), "Z": Z.tolist()}
                for pair in ("XX", "ZX"):
                    case[pair] = {kind: k[pair][kind].tolist() for kind in ("nngp", "ntk")}
                    assert k[pair]["nngp"].shape == ((4, 4) if pair == "XX" else (3, 4))
                    assert np.all(np.isfinite(k[pair]["ntk"]))
                cases.append(case)
    tanh_change = check_tanh_degree(cases)
    assert tanh_change < 1e-10, tanh_change
    pip = subprocess.run([sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    out = {
        "neural_tangents": nt.__version__,
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__,
        "numpy": np.__version__,
        "x64": True,
        "install": 'pip install "jax[cpu]==0.4.25" "jaxlib==0.4.25" neural-tangents==0.6.5 "numpy<2"',
        "generated_by": "python tests/data/make_neural_tangents_stax_reference.py",
        "pip_freeze_jax": [line for line in pip.splitlines() if "jax" in line or "neural" in line],
        "tanh": {"layer": "stax.ElementwiseNumerical(jnp.tanh, deg, df=1 - tanh**2)",
                 "deg": TANH_DEGREE,
                 "check_degrees": list(CHECK_DEGREES), "max_abs_change": tanh_change},
        "conventions": {
            "layout": "X, Z channels-first (n, C, H, W) / (n, C, L); NT got np.moveaxis(x, 1, -1)",
            "pairs": "XX = kernel_fn(X, None); ZX = kernel_fn(Z, X), shape (m, n)",
            "AvgPool_strides_null": "NT default: stride 1 in every spatial axis (not the window)",
            "AvgPool_normalize_edges": False,
            "LayerNorm": "stax.LayerNorm(axis=-1, eps=1e-12): features, or channels per position",
            "Gelu": "exact (erf); stax.Gelu(approximate=False)",
            "Sin": "stax.Sin(a=1, b=1, c=0) = sin(x)",
        },
        "cases": cases,
    }
    path = Path(__file__).with_name("neural_tangents_stax_reference.json")
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {len(cases)} cases to {path} ({path.stat().st_size} bytes); "
          f"tanh degree change {tanh_change:.1e}")


if __name__ == "__main__":
    main()
