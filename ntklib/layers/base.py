"""Layers and the combinators that compose them (neural-tangents' ``stax`` idea, in torch).

A :class:`Layer` holds two rules side by side: ``build`` makes its finite, randomly
initialised torch module, and ``kernel`` maps the infinite-width :class:`KernelState`.
``output_shape`` checks the input and gives the finite output shape. Values that flow
through a network are single (a shape, a state, a tensor) or, between :func:`FanOut` and
:func:`FanInSum`, lists of them, one per branch.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import positive_int


class LayerError(ValueError):
    """A network that cannot be built or evaluated as described; the message names the layer."""


class Layer:
    """A layer: its finite module and its infinite-width kernel rule, from one description.

    Public use: ``layer.kernels(X, Z)`` for the NNGP and NTK, ``layer.init(in_shape, ...)``
    for a finite network; both accept any layer, most usefully a :func:`serial` network.
    """

    # -- the protocol each layer implements -------------------------------------------------
    def output_shape(self, in_shape: Any) -> Any:
        """The finite output shape (per input, channels first) for ``in_shape``; raises
        :class:`LayerError` naming the layer and the shapes when the input does not fit."""
        raise NotImplementedError

    def build(self, in_shape: Any, context: "BuildContext") -> nn.Module:
        """The finite module for inputs of ``in_shape`` (already checked by output_shape)."""
        raise NotImplementedError

    def kernel(self, state: Any) -> Any:
        """The kernel rule: the state of this layer's outputs from that of its inputs."""
        raise NotImplementedError

    # Whether the kernel rule mixes different pixels (pooling: it needs all pixel pairs), and
    # whether it uses the inputs' variances (activations, LayerNorm).
    mixes_pixels = False
    uses_variances = False
    # Whether the kernel rule may read its input's activation record (KernelState.record): an
    # activation composes with the one before it; FanOut and Identity pass the units on.
    reads_activation_record = False

    def kernel_followed_by(self, state: Any, following: "Layer | None") -> Any:
        """The kernel rule when ``following`` is the next layer (None: none, or unknown).

        Combinators pass the next layer on to each of theirs; an activation keeps the record a
        following activation needs (see :class:`~ntklib.layers.state.ActivationRecord`)
        only when ``following.reads_activation_record``. Other layers ignore it.
        """
        return self.kernel(state)

    def sublayers(self) -> tuple["Layer", ...]:
        """The layers a combinator holds, in the order their rules run."""
        return ()

    def kernel_of_inputs(self, X: Tensor, Z: Tensor, same: bool, layout) -> Any:
        """The kernel rule applied to the inputs' state; layers that can start from the raw
        inputs more cheaply (Dense, Conv) override it."""
        from .state import input_state

        return self.kernel(input_state(X, Z, same, layout))

    # -- public entry points ----------------------------------------------------------------
    def kernels(self, X: Tensor, Z: Tensor | None = None, *, block_size: int | None = None):
        """NNGP and NTK of this network at infinite width, between the rows of X and of Z.

        Args:
            X: (n, d) vectors or ``(n, C, *S)`` images (channels first, S = (H, W) or (L,)).
            Z: (m, ...) inputs of the same per-input shape; None means X (then only the blocks
                on and above the diagonal are computed and mirrored: K is exactly symmetric).
            block_size: inputs per side of a block of input pairs (default: the rows of X in
                equal blocks of at most 2^18 kernel entries). The working memory is a few blocks of
                ``block_size^2 |S|^2`` entries (full pixel pairs, when the network pools) or
                ``block_size^2 |S|`` entries, whatever n and m are; the results are (n, m).

        Returns:
            :class:`~ntklib.Kernels` (nngp, ntk), each (n, m) on X's device and dtype; a list
            of them for a network with several outputs (branches never summed).
        """
        from .driver import compute_kernels

        return compute_kernels(self, X, Z, block_size)

    def init(self, in_shape: int | tuple[int, ...], *, generator: torch.Generator | None = None,
             dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> "Network":  # fmt: skip
        """A finite, randomly initialised network with this description.

        Args:
            in_shape: per-input shape: d for vectors, (C, H, W) or (C, L) for images.
            generator: draws every parameter, layer by layer (weights, then biases), on the
                generator's own device; the global generator when None.
            dtype, device: of the parameters; torch's defaults when None.

        Returns:
            A :class:`Network` (a ``torch.nn.Module``) mapping ``(n, *in_shape)`` to the outputs.
        """
        in_shape = _as_shape(in_shape)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point torch.dtype; got {dtype!r}")
        self.output_shape(in_shape)
        context = BuildContext(generator, dtype, device, mup_roles(self))
        return Network(self, in_shape, self.build(in_shape, context))

    # -- helpers for subclasses ---------------------------------------------------------------
    def _single(self, value: Any) -> Any:
        if isinstance(value, list):
            raise LayerError(f"{self!r} receives {len(value)} branches: combine them with FanInSum() first, "
                             "or give each branch its own layer with parallel(...)")  # fmt: skip
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclasses.dataclass(frozen=True)
class BuildContext:
    """What every finite module is built with: the random generator (drawing the parameters in
    build order), dtype and device, and the muP role of each weight layer (see mup_roles)."""

    generator: torch.Generator | None
    dtype: torch.dtype
    device: torch.device | str | None
    roles: dict[int, str]


def mup_roles(net: "Layer") -> dict[int, str]:
    """The role of each weight layer in the "mup" parameterisation, which scales the first
    (input) and the last (output) weight layer of the network unlike the others (hidden): by
    execution order, branches one after the other. Keyed by id(layer)."""
    weighted = [layer for layer in all_layers(net) if getattr(layer, "parameterization", None) is not None]
    roles: dict[int, str] = {}
    for index, layer in enumerate(weighted):
        if layer.parameterization != "mup":
            continue
        role = "input" if index == 0 else "output" if index == len(weighted) - 1 else "hidden"
        if roles.get(id(layer), role) != role:
            raise LayerError(f"{layer!r} appears twice in the network with different muP roles; use two layer objects")
        roles[id(layer)] = role
    return roles


def _as_shape(in_shape: object) -> tuple[int, ...]:
    if isinstance(in_shape, int) and not isinstance(in_shape, bool):
        in_shape = (in_shape,)
    if not isinstance(in_shape, (tuple, list, torch.Size)) or not in_shape:
        raise TypeError(f"in_shape must be d or a tuple (C, H, W) / (C, L); got {in_shape!r}")
    return tuple(positive_int("in_shape entries", size) for size in in_shape)


def all_layers(net: Layer) -> list[Layer]:
    """Every layer of a network, combinators unfolded, in the order their rules run (branches
    one after the other). Iterative, so that very deep descriptions do not hit Python's
    recursion limit."""
    out: list[Layer] = []
    stack = [net]
    while stack:
        layer = stack.pop()
        children = layer.sublayers()
        if children:
            stack.extend(reversed(children))
        else:
            out.append(layer)
    return out


def layout_for(net: Layer, spatial: tuple[int, ...]):
    """The pixel layout the kernel state needs: all pixel pairs of nngp and ntk when some layer
    pools, and of the variances too only when a pooling layer comes before a layer that uses
    them (conservatively, across branches too)."""
    from .state import Layout

    layers = all_layers(net)
    full = bool(spatial) and any(layer.mixes_pixels for layer in layers)
    mixed, cov_full = False, False
    for layer in layers:
        cov_full = cov_full or (mixed and layer.uses_variances)
        mixed = mixed or layer.mixes_pixels
    return Layout(full, full and cov_full)


class Network(nn.Module):
    """A finite network built by ``layer.init``: checks its inputs, then runs the layers.

    Attributes:
        description: the :class:`Layer` it was built from (its ``kernels`` are this network's
            infinite-width limit).
        in_shape: the per-input shape it accepts.
        body: the module tree of the layers.
    """

    def __init__(self, description: Layer, in_shape: tuple[int, ...], body: nn.Module) -> None:
        super().__init__()
        self.description = description
        self.in_shape = in_shape
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        """``(n, *in_shape)`` -> outputs (n, ...). Checks shape, dtype and device only (no NaN scan,
        which would force a device sync and break ``torch.func.vmap``)."""
        self.check_input("x", x)
        return self.body(x)

    def check_input(self, name: str, x: object) -> None:
        """Raise a TypeError/ValueError naming ``name`` unless x is ``(n, *in_shape)`` on the
        parameters' device and dtype."""
        expected = "(n, " + ", ".join(map(str, self.in_shape)) + ")"
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape {expected}; got {type(x).__name__}")
        if len(self.in_shape) == 1 and x.ndim == 2 and x.shape[1] != self.in_shape[0]:
            raise ValueError(f"{name} has {x.shape[1]} features but this {type(self).__name__} expects "
                             f"in_features={self.in_shape[0]}")  # fmt: skip
        if tuple(x.shape[1:]) != self.in_shape or x.ndim != len(self.in_shape) + 1:
            hint = f" (for a single input use {name}[None])" if tuple(x.shape) == self.in_shape else ""
            raise ValueError(f"{name} must have shape {expected} for this network; got {tuple(x.shape)}{hint}")
        parameter = next(self.parameters(), None)
        if parameter is not None:
            if x.dtype != parameter.dtype:
                raise TypeError(f"{name} has dtype {x.dtype} but the {type(self).__name__}'s parameters are {parameter.dtype}; "
                                "cast one of them")  # fmt: skip
            if x.device != parameter.device:
                raise ValueError(f"{name} is on {x.device} but the {type(self).__name__}'s parameters are on "
                                 f"{parameter.device}; move one of them")  # fmt: skip

    def extra_repr(self) -> str:
        return f"in_shape={self.in_shape}"


# ------------------------------------------------------------------------------ combinators


class Serial(Layer):
    """Layers applied one after the other."""

    def __init__(self, layers: tuple[Layer, ...]) -> None:
        self.layers = layers

    def __repr__(self) -> str:
        return "serial(" + ", ".join(map(repr, self.layers)) + ")"

    def output_shape(self, in_shape):
        for layer in self.layers:
            in_shape = layer.output_shape(in_shape)
        return in_shape

    def build(self, in_shape, context):
        modules = []
        for layer in self.layers:
            modules.append(layer.build(in_shape, context))
            in_shape = layer.output_shape(in_shape)
        return SerialModule(*modules)

    def kernel(self, state):
        return self.kernel_followed_by(state, None)

    def kernel_followed_by(self, state, following):
        for index, layer in enumerate(self.layers):
            state = layer.kernel_followed_by(state, self._next(index, following))
        return state

    def kernel_of_inputs(self, X, Z, same, layout, following: Layer | None = None):
        first = self.layers[0]
        if isinstance(first, Serial):
            state = first.kernel_of_inputs(X, Z, same, layout, following=self._next(0, following))
        else:
            state = first.kernel_of_inputs(X, Z, same, layout)
        for index, layer in enumerate(self.layers[1:], start=1):
            state = layer.kernel_followed_by(state, self._next(index, following))
        return state

    def _next(self, index: int, following: Layer | None) -> Layer | None:
        return self.layers[index + 1] if index + 1 < len(self.layers) else following

    @property
    def reads_activation_record(self) -> bool:
        return bool(self.layers) and self.layers[0].reads_activation_record

    def sublayers(self):
        return self.layers


class SerialModule(nn.Sequential):
    """The finite module of :func:`serial` (values may be tuples between FanOut and FanInSum)."""


def serial(*layers: Layer) -> Serial:
    """Compose layers: ``serial(a, b, c)`` applies a, then b, then c (neural-tangents'
    ``stax.serial``); serial is associative."""
    for index, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"serial: argument {index} is not an ntklib layer: {layer!r}")
    flat: list[Layer] = []
    for layer in layers:
        flat.extend(layer.layers if isinstance(layer, Serial) else (layer,))
    return Serial(tuple(flat))


class Parallel(Layer):
    """One layer per branch: maps a list of n values to a list of n values."""

    def __init__(self, layers: tuple[Layer, ...]) -> None:
        self.layers = layers

    def __repr__(self) -> str:
        return "parallel(" + ", ".join(map(repr, self.layers)) + ")"

    def _branches(self, values):
        if not isinstance(values, list) or len(values) != len(self.layers):
            got = f"{len(values)} branches" if isinstance(values, list) else "a single input"
            raise LayerError(f"{self!r} has {len(self.layers)} branches but receives {got}: "
                             f"put FanOut({len(self.layers)}) before it")  # fmt: skip
        return values

    def output_shape(self, in_shape):
        return [layer.output_shape(shape) for layer, shape in zip(self.layers, self._branches(in_shape))]

    def build(self, in_shape, context):
        return ParallelModule([layer.build(shape, context) for layer, shape in zip(self.layers, self._branches(in_shape))])

    def kernel(self, state):
        return self.kernel_followed_by(state, None)

    def kernel_followed_by(self, state, following):
        # Branch i goes on to branch i of a following parallel, or else to what follows (a sum).
        if isinstance(following, Parallel) and len(following.layers) == len(self.layers):
            nexts = following.layers
        else:
            nexts = (following,) * len(self.layers)
        return [layer.kernel_followed_by(branch, after)
                for layer, branch, after in zip(self.layers, self._branches(state), nexts)]  # fmt: skip

    @property
    def reads_activation_record(self) -> bool:
        return any(layer.reads_activation_record for layer in self.layers)

    def sublayers(self):
        return self.layers


class ParallelModule(nn.ModuleList):
    """The finite module of :func:`parallel`: module i applied to input i."""

    def forward(self, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return tuple(module(x) for module, x in zip(self, inputs))


def parallel(*layers: Layer) -> Parallel:
    """Apply layer i to branch i of the output of a FanOut (neural-tangents' ``stax.parallel``)."""
    if not layers:
        raise ValueError("parallel needs at least one layer")
    for index, layer in enumerate(layers):
        if not isinstance(layer, Layer):
            raise TypeError(f"parallel: argument {index} is not an ntklib layer: {layer!r}")
    return Parallel(tuple(layers))


class FanOut(Layer):
    """Copy the input into ``num`` branches (for residual and multi-branch networks)."""

    def __init__(self, num: int) -> None:
        self.num = positive_int("num", num)

    def __repr__(self) -> str:
        return f"FanOut({self.num})"

    def output_shape(self, in_shape):
        return [self._single(in_shape)] * self.num

    def build(self, in_shape, context):
        return FanOutModule(self.num)

    reads_activation_record = True  # each branch may start with an activation

    def kernel(self, state):
        state = self._single(state)
        record = state.record
        if record is not None:  # the pre-activations are no longer independent of other branches
            record = dataclasses.replace(record, pre=record.pre.replace(fresh=False))
        state = state.replace(fresh=False, record=record)
        # Kernel rules overwrite their input: every branch but the first gets its own copy (of
        # all but the record, which nobody writes into).
        return [state] + [state.clone() for _ in range(self.num - 1)]


class FanOutModule(nn.Module):
    def __init__(self, num: int) -> None:
        super().__init__()
        self.num = num

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return (x,) * self.num

    def extra_repr(self) -> str:
        return f"num={self.num}"


class FanInSum(Layer):
    """Sum the branches (the end of a residual block).

    The kernels of a sum are the sums of the branches' kernels when the branches are
    uncorrelated. That holds when every branch but at most one ends in weights drawn after
    the FanOut (a Dense or Conv layer followed only by linear layers): such a branch is zero
    mean and independent of the others given the input. The skip connection of a residual
    block is the one branch that may be anything. Other sums (two identity branches, two
    activations of the same input) have cross-covariances the branch kernels do not carry,
    so they raise rather than return a wrong kernel; neural-tangents instead accepts only
    all-Gaussian branches, including the two-identity sum it then gets wrong.
    """

    def output_shape(self, in_shape):
        shapes = self._branches(in_shape)
        if any(shape != shapes[0] for shape in shapes):
            raise LayerError(f"FanInSum: the branches have different shapes {shapes}; a sum needs equal shapes")
        return shapes[0]

    def _branches(self, values):
        if not isinstance(values, list):
            raise LayerError("FanInSum receives a single input: it sums the branches of a FanOut")
        return values

    def build(self, in_shape, context):
        return FanInSumModule()

    def kernel(self, states):
        states = self._branches(states)
        correlated = [index for index, state in enumerate(states) if not state.fresh]
        if len(correlated) > 1:
            raise LayerError(
                f"FanInSum: branches {correlated} do not end in weights of their own (a Dense or Conv "
                "layer after the FanOut, then only linear layers), so they are correlated and the sum's "
                "kernel is not the sum of theirs; at most one branch (the skip connection) may be so"
            )
        total = states[0]
        for other in states[1:]:
            total = total.replace(
                nngp=total.nngp.add_(other.nngp),
                ntk=total.ntk.add_(other.ntk),
                cov1=None if total.cov1 is None else total.cov1.add_(other.cov1),
                cov2=None if total.cov2 is None else total.cov2.add_(other.cov2),
            )
        return total.replace(is_gaussian=all(s.is_gaussian for s in states), fresh=all(s.fresh for s in states))


class FanInSumModule(nn.Module):
    def forward(self, inputs: tuple[Tensor, ...]) -> Tensor:
        total = inputs[0]
        for x in inputs[1:]:
            total = total + x
        return total


class Identity(Layer):
    """The identity (the skip branch of a residual block)."""

    def output_shape(self, in_shape):
        return in_shape

    def build(self, in_shape, context):
        return nn.Identity()

    reads_activation_record = True  # passes its input's units on unchanged

    def kernel(self, state):
        return state
