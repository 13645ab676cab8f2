"""The empirical NTK of a finite network, its linearisation, and Monte Carlo kernels of random MLPs.

For a network f(x; theta) with P trainable parameters, the empirical NTK is

    Theta(x, z) = sum_p  df(x)/dtheta_p  df(z)/dtheta_p  =  J(x) J(z)^T,

which at initialisation converges to the analytic NTK of :mod:`ntklib.infinite` as the width
grows (Jacot et al. 2018), and which governs the linearised network
f_lin(x; theta) = f(x; theta_0) + J(x) (theta - theta_0) (Lee et al. 2019).

Every function here evaluates the rows of X separately in effect: the model must treat the rows
of its input independently (no batch normalisation), as a kernel requires.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from ._checks import as_matrix, as_matrix_pair, positive_int
from .infinite import Kernels
from .networks import MLP

METHODS = ("auto", "structured", "jacobian", "ntk_vp")


def empirical_ntk(
    model: nn.Module,
    X: Tensor,
    Z: Tensor | None = None,
    method: str = "auto",
    *,
    block_size: int | None = None,
) -> Tensor:
    """Theta[i, j] = sum_p df(x_i)/dp df(z_j)/dp over the trainable parameters p of ``model``.

    Output convention: a model with outputs of shape (n,) or (n, 1) is scalar and gives Theta of
    shape (n, m). A model with outputs (n, k), k > 1, gives the full output blocks
    Theta[i, j, a, b] = sum_p df_a(x_i)/dp df_b(z_j)/dp of shape (n, m, k, k), the layout of
    neural-tangents with trace_axes=() and of PyTorch's NTK tutorial. For a randomly initialised
    MLP the entries a != b are small next to the diagonal ones and vanish relative to them as
    the width grows; then ``Theta.diagonal(dim1=2, dim2=3).mean(-1)`` is an (n, m) summary.

    Methods (all agree to rounding; the results differ only in cost):
      * "structured" (:class:`ntklib.MLP` only): never forms the P-column Jacobian. A Dense layer
        h = s_W a W^T + s_b b has dh_u/dW_uv = s_W a_v and dh_u/db_u = s_b, so its share is
        (delta(x) . delta(z)) (s_W^2 a(x) . a(z) + s_b^2), where a is the layer's input and
        delta = df/dh its backward signal, got by one batched manual backward pass. Cost
        O((n + m) width^2 depth + n m width depth); memory O(n m + (n + m) width depth).
      * "jacobian": per-sample Jacobians by ``vmap(jacrev)``, contracted parameter by
        parameter. Cost O((n + m) k P) memory and O(n m k^2 P) time.
      * "ntk_vp": NTK-vector products Theta v = J(X) (J(Z)^T v) (a vjp, then a jvp), applied to
        the columns of the (m k)-identity, ``block_size`` at a time under vmap. Never stores a
        Jacobian: memory is that of block_size forward passes, time O(m k) vjp + jvp pairs.
      * "auto": "structured" for an MLP, else "jacobian".

    Args:
        model: a module mapping (n, d) -> (n,) or (n, k), with parameters on X's device and dtype.
        X: (n, d) inputs.
        Z: (m, d) inputs; None means X.
        method: "auto", "structured", "jacobian" or "ntk_vp".
        block_size: basis columns per vmapped batch of "ntk_vp" (default: about 2^16 sample
            evaluations per batch); ignored by the other methods.

    Returns:
        The NTK Theta, (n, m) or (n, m, k, k), on X's device and dtype.
    """
    X, Z_ = as_matrix_pair(X, Z)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(METHODS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    params = _trainable_parameters(model, X)
    if isinstance(model, MLP):
        model.check_input("X", X)
        model.check_input("Z", Z_)
    if method == "auto":
        method = "structured" if isinstance(model, MLP) else "jacobian"
    if block_size is not None:
        block_size = positive_int("block_size", block_size)

    if method == "structured":
        if not isinstance(model, MLP):
            raise ValueError(
                f"method='structured' needs an ntklib MLP (it uses the known layer structure); got "
                f"{type(model).__name__}: use method='jacobian' or 'ntk_vp'"
            )
        theta, _ = _structured_ntk(model, X, None if Z is None else Z_)
        k = model.out_features
    else:
        k = _output_dim(model, X)
        if method == "jacobian":
            theta = _jacobian_ntk(model, params, X, None if Z is None else Z_, k)
        else:
            theta = _ntk_vp(model, params, X, Z_, k, block_size)
    return (theta[:, :, 0, 0] if k == 1 else theta).contiguous()


def _trainable_parameters(model: nn.Module, X: Tensor) -> dict[str, Tensor]:
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError(
            f"model ({type(model).__name__}) has no trainable parameters (none with requires_grad=True): "
            "the NTK sums over parameters, so it is not defined"
        )
    for name, p in params.items():
        if p.device != X.device:
            raise ValueError(f"X is on {X.device} but model parameter {name!r} is on {p.device}; move one of them")
        if p.dtype != X.dtype:
            raise TypeError(f"X has dtype {X.dtype} but model parameter {name!r} has {p.dtype}; cast one of them")
    return params


def _output_dim(model: nn.Module, X: Tensor) -> int:
    """k for outputs (n,) (k = 1) or (n, k), from one forward pass on the first row of X."""
    try:
        with torch.no_grad():
            out = model(X[:1])
    except RuntimeError as error:
        raise ValueError(f"model failed on X of shape {tuple(X.shape)}: {error}") from error
    if not isinstance(out, Tensor) or out.ndim not in (1, 2) or out.shape[0] != 1 or out.numel() == 0:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model must map (n, d) inputs to outputs of shape (n,) or (n, k); for n=1 it gave {shape}")
    return 1 if out.ndim == 1 else out.shape[1]


def _structured_ntk(model: MLP, X: Tensor, Z: Tensor | None) -> tuple[Tensor, Tensor]:
    """Theta as (n, m, k, k), and the Gram a_L(X) a_L(Z)^T of the readout's inputs (n, m).

    Z=None means Z = X, which halves the work and keeps Theta exactly symmetric.
    """
    with torch.no_grad():
        inputs_x, signals_x = _forward_backward(model, X)
        inputs_z, signals_z = (inputs_x, signals_x) if Z is None else _forward_backward(model, Z)
        n, m, k = X.shape[0], (X if Z is None else Z).shape[0], model.out_features
        theta = torch.zeros(n, k, m, k, dtype=X.dtype, device=X.device)
        readout_gram = inputs_x[-1] @ inputs_z[-1].T
        for layer, a_x, a_z, delta_x, delta_z in zip(model.layers, inputs_x, inputs_z, signals_x, signals_z):
            use_weight = layer.weight.requires_grad
            use_bias = layer.bias is not None and layer.bias.requires_grad and layer.bias_scale != 0.0
            if not (use_weight or use_bias):
                continue  # frozen layer: no parameters of it in the sum
            gram = readout_gram if layer is model.readout else a_x @ a_z.T
            # s_W^2 a(x).a(z) + s_b^2: the layer-input factor, (n, m).
            factor = gram * layer.weight_scale**2 if use_weight else torch.zeros_like(gram)
            if use_bias:
                factor = factor + layer.bias_scale**2
            if delta_x is None:  # the readout: df_a/dh_b = [a == b]
                theta.diagonal(dim1=1, dim2=3).add_(factor[:, :, None])
            else:
                signal_gram = (delta_x.reshape(n * k, -1) @ delta_z.reshape(m * k, -1).T).view(n, k, m, k)
                theta.add_(signal_gram.mul_(factor[:, None, :, None]))
        return theta.permute(0, 2, 1, 3), readout_gram


def _forward_backward(model: MLP, X: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
    """For every Dense layer: its input a (n, fan_in) and its backward signal df/dh (n, k, fan_out).

    The readout's signal is the identity (df_a/dh_b = [a == b]) and is returned as None; for a
    hidden layer l, delta_l = (delta_{l+1} @ (s_W W_{l+1})) * phi'(h_l), the chain rule through
    the next Dense layer and this layer's activation.
    """
    inputs, preactivations = [], []
    a = X
    for layer in model.hidden:
        inputs.append(a)
        h = layer(a)
        preactivations.append(h)
        a = model.phi(h)
    inputs.append(a)

    signals: list[Tensor | None] = [None] * (model.depth + 1)
    # Through the readout: d f_a / d a_L = s_W W_readout[a], the same for every sample.
    upstream = (model.readout.weight_scale * model.readout.weight).expand(X.shape[0], -1, -1)  # (n, k, w)
    for index in reversed(range(model.depth)):
        delta = upstream * model.phi_prime(preactivations[index])[:, None, :]  # (n, k, w)
        signals[index] = delta
        if index > 0:
            layer = model.hidden[index]
            upstream = delta @ (layer.weight_scale * layer.weight)  # (n, k, fan_in)
    return inputs, signals


def _jacobian_ntk(model: nn.Module, params: dict[str, Tensor], X: Tensor, Z: Tensor | None, k: int) -> Tensor:
    """J(X) J(Z)^T with per-sample Jacobians from vmap(jacrev), as (n, m, k, k)."""

    def f(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, p, (x[None, :],)).reshape(k)

    per_sample_jacobian = vmap(jacrev(f), in_dims=(None, 0))
    jac_x = per_sample_jacobian(params, X)  # name -> (n, k, *shape)
    jac_z = jac_x if Z is None else per_sample_jacobian(params, Z)
    n, m = X.shape[0], (X if Z is None else Z).shape[0]
    theta = torch.zeros(n * k, m * k, dtype=X.dtype, device=X.device)
    # One parameter tensor at a time: no (n k, P) concatenated copy of the Jacobian.
    for name in params:
        theta.addmm_(jac_x[name].reshape(n * k, -1), jac_z[name].reshape(m * k, -1).T)
    return theta.view(n, k, m, k).permute(0, 2, 1, 3)


def _ntk_vp(
    model: nn.Module, params: dict[str, Tensor], X: Tensor, Z: Tensor, k: int, block_size: int | None
) -> Tensor:
    """Theta = J(X) J(Z)^T column by column: Theta e_c = J(X) (J(Z)^T e_c), as (n, m, k, k)."""
    n, m = X.shape[0], Z.shape[0]

    def f_x(p: dict[str, Tensor]) -> Tensor:
        return functional_call(model, p, (X,)).reshape(n, k)

    def f_z(p: dict[str, Tensor]) -> Tensor:
        return functional_call(model, p, (Z,)).reshape(m, k)

    _, vjp_z = vjp(f_z, params)  # the backward graph of f(Z), recorded once

    def theta_times(v: Tensor) -> Tensor:  # (m, k) -> (n, k)
        (tangent,) = vjp_z(v)
        return jvp(f_x, (params,), (tangent,))[1]

    columns = m * k
    block = block_size or max(1, min(columns, (1 << 16) // (n + m)))
    out = torch.empty(columns, n, k, dtype=X.dtype, device=X.device)
    batched = vmap(theta_times)
    for start in range(0, columns, block):
        stop = min(start + block, columns)
        basis = torch.zeros(stop - start, columns, dtype=X.dtype, device=X.device)
        basis[:, start:stop].fill_diagonal_(1.0)
        out[start:stop] = batched(basis.view(-1, m, k))
    # out[(j, b), i, a] = Theta[i, j, a, b]
    return out.view(m, k, n, k).permute(2, 0, 3, 1)


class LinearizedModel:
    """f_lin(params, x) = f(x; theta_0) + J(x) (params - theta_0): the first-order Taylor
    expansion of a model around its parameters theta_0 at construction, by one
    ``torch.func.jvp`` (no Jacobian is stored).

    theta_0, the frozen parameters and the buffers are copied at construction, so training the
    original model afterwards does not move the expansion point. The result is an ordinary
    differentiable torch function of ``params``: its gradient is J(x)^T (constant in params),
    so gradient descent on it is kernel regression with the empirical NTK at theta_0.

    Attributes:
        model: the module (used for its structure only).
        params0: theta_0, a dict name -> tensor of the trainable parameters, as
            ``model.named_parameters()``; ``f_lin(f_lin.params0, x) == model(x)``.
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        self.model = model
        self.params0 = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
        if not self.params0:
            raise ValueError(f"model ({type(model).__name__}) has no trainable parameters to linearise in")
        frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
        self._constants = {**frozen, **{name: b.detach().clone() for name, b in model.named_buffers()}}

    def __call__(self, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        """params: name -> tensor shaped as theta_0; x: (n, d). Returns what model(x) would."""
        x = as_matrix("x", x)
        tangents = self._tangents(params)

        def f(p: dict[str, Tensor]) -> Tensor:
            return functional_call(self.model, {**self._constants, **p}, (x,))

        out, change = jvp(f, (self.params0,), (tangents,))
        return out + change

    def _tangents(self, params: object) -> dict[str, Tensor]:
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict name -> tensor like model.named_parameters(); got {type(params).__name__}")
        missing = sorted(self.params0.keys() - params.keys())
        unexpected = sorted(params.keys() - self.params0.keys())
        if missing or unexpected:
            raise ValueError(f"params must have exactly the model's trainable names; missing {missing}, unexpected {unexpected}")
        tangents = {}
        for name, p0 in self.params0.items():
            p = params[name]
            if not isinstance(p, Tensor) or p.shape != p0.shape:
                shape = tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__
                raise ValueError(f"params[{name!r}] must have shape {tuple(p0.shape)}; got {shape}")
            if p.dtype != p0.dtype or p.device != p0.device:
                raise TypeError(f"params[{name!r}] is {p.dtype} on {p.device} but theta_0 is {p0.dtype} on {p0.device}")
            tangents[name] = p - p0
        return tangents


def linearize(model: nn.Module) -> LinearizedModel:
    """The linearisation of ``model`` around its current parameters theta_0.

    Returns f_lin with ``f_lin(params, x) = f(x; theta_0) + J(x) (params - theta_0)``, for params
    a dict name -> tensor (start from ``f_lin.params0``). See :class:`LinearizedModel`.
    """
    return LinearizedModel(model)


def monte_carlo_kernels(
    X: Tensor,
    Z: Tensor | None = None,
    depth: int = 1,
    width: int = 512,
    activation: str = "relu",
    W_std: float = 1.0,
    b_std: float | None = 0.0,
    parameterization: str = "ntk",
    num_samples: int = 16,
    *,
    negative_slope: float = 0.01,
    generator: torch.Generator | None = None,
) -> Kernels:
    """NNGP and NTK of :class:`ntklib.MLP` (out_features = 1), averaged over random networks.

    Draws ``num_samples`` networks ``MLP(d, width, depth, 1, activation, W_std, b_std,
    parameterization)`` and averages, for each:

      * nngp: the output covariance given the hidden layers, E[f(x) f(z) | a_L] =
        W_std^2 / width  a_L(x) . a_L(z) + b_std^2 (a_L the last hidden post-activations; the
        readout's weights and bias are integrated out exactly). Unbiased for the finite network's
        E[f(x) f(z)], with variance O(1 / (width num_samples)) instead of O(1 / num_samples) for
        raw products f(x) f(z);
      * ntk: the empirical NTK of :func:`empirical_ntk` (method "structured").

    As width -> infinity both converge to :func:`ntklib.infinite_width_kernels` with the
    same arguments (for "standard", pass it the same ``width``), with an O(1/width) bias from the
    finite width.

    Args:
        X: (n, d) inputs.
        Z: (m, d) inputs; None means X.
        depth, width, activation, W_std, b_std, parameterization, negative_slope: as
            :class:`ntklib.MLP`.
        num_samples: number of networks >= 1.
        generator: draws every network (on its own device; the global generator when None).

    Returns:
        Kernels(nngp, ntk), each (n, m) on X's device and dtype.
    """
    X, Z_ = as_matrix_pair(X, Z)
    num_samples = positive_int("num_samples", num_samples)
    nngp = torch.zeros(X.shape[0], Z_.shape[0], dtype=X.dtype, device=X.device)
    ntk = torch.zeros_like(nngp)
    for _ in range(num_samples):
        net = MLP(X.shape[1], width, depth, 1, activation, W_std, b_std, parameterization,
                  negative_slope=negative_slope, generator=generator, dtype=X.dtype, device=X.device)
        theta, readout_gram = _structured_ntk(net, X, None if Z is None else Z_)
        ntk += theta[:, :, 0, 0]
        nngp += readout_gram
    b_var = 0.0 if b_std is None else float(b_std) ** 2
    return Kernels(nngp * (float(W_std) ** 2 / (width * num_samples)) + b_var, ntk / num_samples)
