"""NNGP and NTK of a network description, estimated from finite random networks."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from ._checks import as_inputs, positive_int
from .empirical import _output_dim, empirical_ntk
from .layers.base import Layer, Serial
from .layers.linear import Dense



class MonteCarloKernels(NamedTuple):
    """Means over random networks and their standard errors (None for a single network)."""

    nngp: Tensor
    ntk: Tensor
    nngp_stderr: Tensor | None
    ntk_stderr: Tensor | None


def monte_carlo_kernels(
    net: Layer | Tensor,
    X: Tensor | None = None,
    Z: Tensor | None = None,
    n_samples: int = 16,
    *,
    generator: torch.Generator | None = None,
    **mlp_options: object,
) -> MonteCarloKernels:
    """NNGP and NTK of a network description, averaged over finite random networks.

    Draws ``n_samples`` networks ``net.init(in_shape)`` and averages, for each:

      * nngp: when the network ends in a :class:`~ntklib.Dense` readout, the output covariance
        given the layers below it, E[f(x) f(z) | a] = W_std^2 / fan_in  a(x) . a(z) + b_std^2
        (a the readout's input; its weights and bias are integrated out exactly): unbiased for
        the finite network's E[f(x) f(z)], with variance O(1 / (width n_samples)) instead of
        O(1 / n_samples) for raw products; otherwise f(x) . f(z) / k over the k outputs;
      * ntk: the empirical NTK (:func:`empirical_ntk`, "auto"), averaged over the diagonal
        output blocks.

    As the widths grow both converge to ``net.kernels(X, Z)`` (for "standard", at the widths
    given), with an O(1/width) bias from the finite width.

    The older form ``monte_carlo_kernels(X, Z, depth=..., width=..., activation=...,
    W_std=..., b_std=..., parameterization=..., num_samples=..., negative_slope=...)`` is the
    same for :class:`ntklib.MLP` networks (one output).

    Args:
        net: a layer description (e.g. ``nk.serial(...)``), or X for the MLP form.
        X: ``(n, *in_shape)`` inputs.
        Z: ``(m, *in_shape)`` inputs; None means X.
        n_samples: number of networks >= 1.
        generator: draws every network (on its own device; the global generator when None).

    Returns:
        MonteCarloKernels(nngp, ntk, nngp_stderr, ntk_stderr), each (n, m) on X's device and
        dtype; the standard errors of the means are None when n_samples is 1.
    """
    if isinstance(net, Tensor):  # the MLP form: (X, Z, depth=..., width=..., ...)
        from .networks import mlp

        X, Z = net, (X if X is not None else Z)
        width = mlp_options.pop("width", 512)
        n_samples = mlp_options.pop("num_samples", n_samples)
        depth = mlp_options.pop("depth", 1)
        activation = mlp_options.pop("activation", "relu")
        net = mlp(width, depth, 1, activation, **mlp_options)  # type: ignore[arg-type]
    elif mlp_options:
        raise TypeError(f"monte_carlo_kernels got unexpected keyword arguments {sorted(mlp_options)}")
    if not isinstance(net, Layer):
        raise TypeError(f"net must be an ntklib layer description (e.g. nk.serial(...)); got {type(net).__name__}")
    X, Z_ = as_inputs(X, Z)
    n_samples = positive_int("n_samples", n_samples)
    net.output_shape(tuple(X.shape[1:]))
    readout = net.layers[-1] if isinstance(net, Serial) and isinstance(net.layers[-1], Dense) else None
    sums = [X.new_zeros(X.shape[0], (X if Z_ is None else Z_).shape[0]) for _ in range(4)]  # nngp, nngp^2, ntk, ntk^2
    for _ in range(n_samples):
        model = net.init(tuple(X.shape[1:]), generator=generator, dtype=X.dtype, device=X.device)
        nngp = _nngp_sample(model, readout, X, Z_)
        ntk = empirical_ntk(model, X, Z_, layout="trace")
        ntk = ntk / _output_dim(model, X)
        for index, value in ((0, nngp), (2, ntk)):
            sums[index] += value
            sums[index + 1] += value * value
    means = [sums[0] / n_samples, sums[2] / n_samples]
    if n_samples == 1:
        return MonteCarloKernels(means[0], means[1], None, None)
    errors = [((sums[i + 1] / n_samples - mean * mean).clamp_min(0) * (n_samples / (n_samples - 1)) / n_samples).sqrt()
              for i, mean in zip((0, 2), means)]  # fmt: skip
    return MonteCarloKernels(means[0], means[1], errors[0], errors[1])


def _nngp_sample(model: nn.Module, readout: Dense | None, X: Tensor, Z: Tensor | None) -> Tensor:
    with torch.no_grad():
        if readout is None:
            fx = model(X).reshape(X.shape[0], -1)
            fz = fx if Z is None else model(Z).reshape(Z.shape[0], -1)
            return fx @ fz.T / fx.shape[1]
        below = model.body[:-1]
        a_x = below(X)
        a_z = a_x if Z is None else below(Z)
        b_var = 0.0 if readout.b_std is None else readout.b_std**2
        return (a_x @ a_z.T).mul_(readout.W_std**2 / a_x.shape[1]).add_(b_var)
