"""NNGP and NTK of infinitely wide MLPs: thin wrappers over the description :func:`ntklib.networks.mlp`.

With the book's layer indexing (Jacot et al. 2018; the notation page), for L = ``depth``:

  * Sigma^(1) = W_std^2 x.z / d + b_std^2,  Theta^(1) = Sigma^(1);
  * Sigma^(l+1) = W_std^2 E[phi(u) phi(v)] + b_std^2,
    Theta^(l+1) = Sigma^(l+1) + W_std^2 E[phi'(u) phi'(v)] Theta^(l),
    (u, v) ~ N(0, [[Sigma^(l)(x,x), Sigma^(l)(x,z)], [Sigma^(l)(x,z), Sigma^(l)(z,z)]]);
  * the network's kernels are Sigma^(L+1) and Theta^(L+1) ("ntk" parameterisation; see
    :mod:`ntklib.layers.linear` for "standard", whose NTK grows with the width).
"""

from __future__ import annotations

from torch import Tensor

from ._checks import positive_int
from .layers import Layer
from .layers.activations import Activation
from .layers.state import Kernels
from .networks import mlp

__all__ = ["Kernels", "infinite_width_kernels", "infinite_width_kernels_by_depth"]


def infinite_width_kernels(
    X: Tensor,
    Z: Tensor | None = None,
    depth: int = 1,
    activation: str | Activation = "relu",
    W_std: float = 1.0,
    b_std: float | None = 0.0,
    parameterization: str = "ntk",
    width: int | None = None,
    negative_slope: float = 0.01,
    block_size: int | None = None,
) -> Kernels:
    """NNGP and NTK of :class:`ntklib.MLP` in the infinite-width limit.

    The same as ``nk.networks.mlp(width, depth, 1, activation, W_std, b_std,
    parameterization).kernels(X, Z)``, which matches neural-tangents'
    ``stax.serial(Dense(w, W_std, b_std), Act(), ..., Dense(1, W_std, b_std))`` with
    ``kernel_fn(X, Z, ("nngp", "ntk"))``.

    Args:
        X: (n, d) inputs.
        Z: (m, d) inputs; None means X (K is then exactly symmetric).
        depth: number of hidden layers L >= 1.
        activation: "relu", "erf", "identity", "abs", "leaky_relu", "gelu", or an activation
            layer such as ``nk.Elementwise(torch.tanh)``.
        W_std, b_std: weight and bias standard deviations; ``b_std=None`` means no bias
            (it matters only for "standard", where a bias adds 1 to the NTK per layer).
        parameterization: "ntk" or "standard" ("mup" has no infinite-width kernels and raises).
        width: hidden width, needed only by "standard", whose NTK grows with it.
        negative_slope: slope for u < 0 of "leaky_relu".
        block_size: inputs per side of a block of input pairs (see ``Layer.kernels``).

    Returns:
        Kernels(nngp, ntk), each (n, m) on X's device and dtype.
    """
    return _description(depth, activation, W_std, b_std, parameterization, width,
                        negative_slope).kernels(X, Z, block_size=block_size)  # fmt: skip


def infinite_width_kernels_by_depth(
    X: Tensor,
    Z: Tensor | None = None,
    max_depth: int = 5,
    activation: str | Activation = "relu",
    W_std: float = 1.0,
    b_std: float | None = 0.0,
    parameterization: str = "ntk",
    width: int | None = None,
    negative_slope: float = 0.01,
    block_size: int | None = None,
) -> list[Kernels]:
    """The kernels of :func:`infinite_width_kernels` for every depth 1..max_depth, in one pass.

    The network with ``l`` hidden layers shares its first ``l`` layers with every deeper one, so
    one pass through ``max_depth`` hidden layers, sending a copy of the state through the readout
    after each, gives all of them: ``max_depth`` layer passes instead of
    ``max_depth (max_depth + 1) / 2``.
    Arguments as in :func:`infinite_width_kernels`.

    Returns:
        A list whose entry ``l - 1`` is Kernels(nngp, ntk) of the network with ``l`` hidden
        layers, each (n, m) on X's device and dtype.
    """
    max_depth = positive_int("max_depth", max_depth)
    net = _description(max_depth, activation, W_std, b_std, parameterization, width, negative_slope)
    return _ReadoutAfterEveryLayer(net.layers[:-1], net.layers[-1]).kernels(X, Z, block_size=block_size)


class _ReadoutAfterEveryLayer(Layer):
    """The hidden layers (Dense, activation) pairs, with a copy of the state sent through the
    readout after each pair: one output per depth, in one pass and without nesting."""

    def __init__(self, hidden: tuple[Layer, ...], readout: Layer) -> None:
        self.hidden, self.readout = hidden, readout

    def output_shape(self, in_shape):
        shapes = []
        for index, layer in enumerate(self.hidden):
            in_shape = layer.output_shape(in_shape)
            if index % 2 == 1:
                shapes.append(self.readout.output_shape(in_shape))
        return shapes

    def kernel_of_inputs(self, X, Z, same, layout):
        state = self.hidden[0].kernel_of_inputs(X, Z, same, layout)
        return self._rest(state)

    def kernel(self, state):
        return self._rest(self.hidden[0].kernel(state))

    def _rest(self, state):
        outputs = []
        for index, layer in enumerate(self.hidden[1:], start=1):
            state = layer.kernel(state)
            if index % 2 == 1:
                last = index == len(self.hidden) - 1  # the last readout may consume the state
                outputs.append(self.readout.kernel(state if last else state.clone()))
        return outputs

    def sublayers(self):
        return (*self.hidden, self.readout)


def _description(depth, activation, W_std, b_std, parameterization, width, negative_slope):
    depth = positive_int("depth", depth)
    if parameterization == "standard":
        if width is None:
            raise ValueError("width is required for parameterization='standard' (its NTK grows with width)")
    elif width is None:
        width = 1  # the "ntk" kernels do not depend on it
    return mlp(width, depth, 1, activation, W_std, b_std, parameterization, negative_slope=negative_slope)
