"""The empirical NTK of a finite network, its linearisation, and Monte Carlo kernels of random networks.

For a network f(x; theta) with P trainable parameters, the empirical NTK is

    Theta(x, z) = sum_p  df(x)/dtheta_p  df(z)/dtheta_p  =  J(x) J(z)^T,

which at initialisation converges to the analytic NTK of the network's description as the width
grows (Jacot et al. 2018), and which governs the linearised network
f_lin(x; theta) = f(x; theta_0) + J(x) (theta - theta_0) (Lee et al. 2019).

Every function here evaluates the rows of X separately in effect: the model must treat the rows
of its input independently (no batch normalisation, no dropout in training mode), as a kernel
requires.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, jvp, vjp, vmap
from torch.nn import functional as F

from ._checks import as_inputs, positive_int
from .layers.linear import ConvModule, DenseModule
from .layers.spatial import patches
from .layers.state import Kernels

METHODS = ("auto", "structured", "jacobian", "ntk_vp")
LAYOUTS = ("full", "trace", "diagonal")
# Modules whose share of the NTK the structured method contracts from backward signals and inputs.
STRUCTURED_MODULES = (DenseModule, ConvModule, nn.Linear, nn.Conv1d, nn.Conv2d)


def empirical_ntk(
    model: nn.Module,
    X: Tensor,
    Z: Tensor | None = None,
    method: str = "auto",
    *,
    layout: str = "full",
    block_size: int | None = None,
) -> Tensor:
    """Theta[i, j] = sum_p df(x_i)/dp df(z_j)/dp over the trainable parameters p of ``model``.

    Output layouts (PyTorch's NTK tutorial): for a model with outputs (n, k), ``"full"`` gives
    Theta[i, j, a, b] = sum_p df_a(x_i)/dp df_b(z_j)/dp of shape (n, m, k, k) (neural-tangents
    with trace_axes=()), squeezed to (n, m) when the outputs are (n,) or (n, 1);
    ``"diagonal"`` the blocks a = b, (n, m, k); ``"trace"`` their sum over a, (n, m). For a
    randomly initialised wide network the blocks a != b are small next to the diagonal ones and
    vanish relative to them as the width grows.

    Methods (all agree to rounding; they differ in cost):
      * "structured": never forms the P-column Jacobian. For a layer h = s_W W a + s_b b with
        backward signal delta = df/dh, dh_u/dW_uv = s_W a_v: a Dense layer's share is
        (delta(x) . delta(z)) (s_W^2 a(x) . a(z) + s_b^2); a convolution's weights are shared
        by all positions, so its share is the inner product of the per-input weight gradients
        s_W sum_p delta(x, p) patch(x, p)^T, one layer at a time. The signals come from one
        batched backward pass per output. Works for networks built by ``net.init`` (any
        layers) and any module whose trainable parameters all sit in ``nn.Linear``,
        ``nn.Conv1d``/``nn.Conv2d`` (groups 1) or ntklib Dense/Conv modules, each called once
        per forward pass (e.g. an ``nn.Sequential`` of those and activations).
      * "jacobian": per-sample Jacobians by ``vmap(jacrev)``, contracted parameter by
        parameter. Memory O((n + m) k P), time O(n m k^2 P).
      * "ntk_vp": NTK-vector products Theta v = J(X) (J(Z)^T v) (a vjp, then a jvp), applied to
        the columns of the (m k)-identity, ``block_size`` at a time under vmap. Never stores a
        Jacobian: memory is that of block_size forward passes, time O(m k) vjp + jvp pairs.
      * "auto": "structured" when the model's parameters allow it, else "jacobian".

    Args:
        model: a module mapping ``(n, *in_shape)`` -> (n,) or (n, k), with parameters on X's
            device and dtype.
        X: ``(n, *in_shape)`` inputs (vectors (n, d) or images (n, C, H, W)).
        Z: ``(m, *in_shape)`` inputs; None means X (Theta is then exactly symmetric).
        method: "auto", "structured", "jacobian" or "ntk_vp".
        layout: "full", "trace" or "diagonal" (above).
        block_size: basis columns per vmapped batch of "ntk_vp" (default: about 2^16 sample
            evaluations per batch); ignored by the other methods.

    Returns:
        The NTK Theta on X's device and dtype, shaped by ``layout``.
    """
    X, Z_ = as_inputs(X, Z)
    Z_ = X if Z_ is None else Z_
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(METHODS)}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of: {', '.join(LAYOUTS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    params = _trainable_parameters(model, X)
    check = getattr(model, "check_input", None)
    if callable(check):
        check("X", X)
        check("Z", Z_)
    if block_size is not None:
        block_size = positive_int("block_size", block_size)
    structured_problem = _structured_problem(model)
    if method == "auto":
        method = "jacobian" if structured_problem else "structured"
    if method == "structured" and structured_problem:
        raise ValueError(f"method='structured' cannot handle this model: {structured_problem}; "
                         "use method='jacobian' or 'ntk_vp'")  # fmt: skip
    k = _output_dim(model, X)
    Z_or_none = None if Z is None else Z_
    if method == "structured":
        theta = _structured_ntk(model, X, Z_or_none, k)
    elif method == "jacobian":
        theta = _jacobian_ntk(model, params, X, Z_or_none, k)
    else:
        theta = _ntk_vp(model, params, X, Z_, k, block_size)
    if layout == "trace":
        return theta.diagonal(dim1=2, dim2=3).sum(-1).contiguous()
    if layout == "diagonal":
        return theta.diagonal(dim1=2, dim2=3).contiguous()
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
    """k for outputs (n,) (k = 1) or (n, k), from one forward pass on the first input."""
    try:
        with torch.no_grad():
            out = model(X[:1])
    except RuntimeError as error:
        raise ValueError(f"model failed on inputs of shape {tuple(X.shape)}: {error}") from error
    if not isinstance(out, Tensor) or out.ndim not in (1, 2) or out.shape[0] != 1 or out.numel() == 0:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"model must map n inputs to outputs of shape (n,) or (n, k); for n=1 it gave {shape}")
    return 1 if out.ndim == 1 else out.shape[1]


# -------------------------------------------------------------------------------- structured


def _structured_problem(model: nn.Module) -> str:
    """Why the structured method cannot handle ``model``, or "" when it can."""
    owned: set[int] = set()
    for name, module in model.named_modules():
        direct = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not direct:
            continue
        if not isinstance(module, STRUCTURED_MODULES):
            return f"module {name!r} ({type(module).__name__}) has trainable parameters of a kind it does not know"
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and (module.groups != 1 or module.transposed):
            return f"module {name!r} is a grouped or transposed convolution"
        owned.update(id(p) for p in direct)
    return ""


def _layer_gradient_factors(module: nn.Module, a: Tensor) -> tuple[Tensor, float, float]:
    """The layer's input as the factor its weight gradient multiplies: (n, fan_in) for a dense
    layer, (n, C_in * filter size, positions) patches for a convolution; and s_W, s_b."""
    if isinstance(module, DenseModule):
        return a, module.weight_scale, module.bias_scale
    if isinstance(module, nn.Linear):
        return a, 1.0, 1.0
    if isinstance(module, ConvModule):
        return patches(a, module.filter_shape, module.stride, module.padding), module.weight_scale, module.bias_scale
    # nn.Conv1d / nn.Conv2d
    padded, stride, dilation = _torch_conv_pad(module, a), module.stride, module.dilation
    s_W, s_b = 1.0, 1.0
    kernel_size = tuple(module.weight.shape[2:])
    if padded.ndim == 3:  # 1-D: unfold is 2-D only
        padded, kernel_size, stride, dilation = (padded[:, :, None, :], (1, *kernel_size), (1, *stride),
                                                 (1, *dilation))  # fmt: skip
    return F.unfold(padded, kernel_size, dilation=dilation, stride=stride), s_W, s_b


def _torch_conv_pad(module: nn.Module, a: Tensor) -> Tensor:
    """The input of a torch convolution with its own padding applied (torch's rules)."""
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return a
        amounts = []
        for d, k in zip(reversed(module.dilation), reversed(module.kernel_size)):
            total = d * (k - 1)
            amounts += [total // 2, total - total // 2]
    else:
        amounts = [p for p in reversed(module.padding) for _ in range(2)]
    if not any(amounts):
        return a
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    return F.pad(a, amounts, mode=mode)


def _signals(model: nn.Module, X: Tensor, k: int) -> list[tuple[nn.Module, Tensor, Tensor]]:
    """For each layer with trainable weights: (module, its input (n, ...), its backward
    signals df_a/dh (n, k, *h.shape[1:])), from one forward pass and k backward passes."""
    records: list[tuple[nn.Module, Tensor, Tensor]] = []
    calls: dict[nn.Module, int] = {}

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        calls[module] = calls.get(module, 0) + 1
        records.append((module, inputs[0].detach(), output))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, STRUCTURED_MODULES) and any(p.requires_grad for p in m.parameters(recurse=False))]  # fmt: skip
    try:
        with torch.enable_grad():
            out = model(X).reshape(X.shape[0], k)
    finally:
        for handle in handles:
            handle.remove()
    repeated = [type(m).__name__ for m, count in calls.items() if count > 1]
    if repeated:
        raise ValueError(f"method='structured' needs each layer called once per forward pass; {repeated} were "
                         "called more often (shared weights): use method='jacobian'")  # fmt: skip
    outputs = [h for _, _, h in records]
    per_output = []
    for a in range(k):
        grads = torch.autograd.grad(out[:, a].sum(), outputs, retain_graph=a + 1 < k, allow_unused=True)
        per_output.append([torch.zeros_like(h) if g is None else g for g, h in zip(grads, outputs)])
    return [(module, inp, torch.stack([g[index] for g in per_output], dim=1).detach())
            for index, (module, inp, _) in enumerate(records)]  # fmt: skip


def _structured_ntk(model: nn.Module, X: Tensor, Z: Tensor | None, k: int) -> Tensor:
    """Theta as (n, m, k, k) by contracting each layer's backward signals with its inputs."""
    signals_x = _signals(model, X, k)
    signals_z = signals_x if Z is None else _signals(model, Z, k)
    n, m = X.shape[0], (X if Z is None else Z).shape[0]
    theta = X.new_zeros(n * k, m * k)
    with torch.no_grad():
        for (module, a_x, delta_x), (_, a_z, delta_z) in zip(signals_x, signals_z):
            use_weight = module.weight.requires_grad
            use_bias = module.bias is not None and module.bias.requires_grad
            factor_x, s_W, s_b = _layer_gradient_factors(module, a_x)
            factor_z = factor_x if Z is None else _layer_gradient_factors(module, a_z)[0]
            if use_bias and s_b == 0.0:
                use_bias = False  # "ntk" with b_std = 0: the bias has a zero gradient
            if factor_x.ndim == 2:  # dense: Gram of signals times Gram of inputs
                if a_x.ndim != 2 or delta_x.ndim != 3:
                    raise ValueError(f"method='structured': {type(module).__name__} receives inputs of shape "
                                     f"{tuple(a_x.shape)}; it handles dense layers on (n, features) only")  # fmt: skip
                signal_gram = delta_x.reshape(n * k, -1) @ delta_z.reshape(m * k, -1).T  # (n k, m k)
                weight = (factor_x @ factor_z.T).mul_(s_W**2) if use_weight else X.new_zeros(n, m)
                if use_bias:
                    weight = weight + s_b**2
                if use_weight or use_bias:
                    theta += signal_gram.view(n, k, m, k).mul_(weight[:, None, :, None]).view(n * k, m * k)
                continue
            # convolution: per-input weight gradients s_W delta (C_out, positions) @ patches^T
            out_channels = delta_x.shape[2]
            dx = delta_x.reshape(n, k, out_channels, -1)  # (n, k, C_out, positions)
            dz = delta_z.reshape(m, k, out_channels, -1)
            if use_weight:
                _conv_weight_share(theta, dx, dz, factor_x, factor_z, s_W**2, Z is None)
            if use_bias:
                bx, bz = dx.sum(-1).reshape(n * k, -1), dz.sum(-1).reshape(m * k, -1)
                theta.addmm_(bx, bz.T, alpha=s_b**2)
    theta = theta.view(n, k, m, k).permute(0, 2, 1, 3)
    if Z is None:  # exactly symmetric, as the kernel is
        full = theta.permute(0, 2, 1, 3).reshape(n * k, n * k)
        full = full.triu() + full.triu(1).T
        theta = full.view(n, k, n, k).permute(0, 2, 1, 3)
    return theta


def _conv_weight_share(theta: Tensor, dx: Tensor, dz: Tensor, ux: Tensor, uz: Tensor, scale: float,
                       symmetric: bool) -> None:  # fmt: skip
    """Add a convolution's weight share to theta (n k, m k), in the cheaper of two exact forms.

    With signals d (n, k, C_out, P) and patches u (n, F, P) (F = C_in x filter size), the
    share is s_W^2 <G(x), G(z)> with the per-input weight gradient G = sum_p d(p) u(p)^T of
    shape (C_out, F): "gradient" form, cost ~ n m k^2 C_out F. Equally it is
    s_W^2 sum_{p, q} (d_x(p) . d_z(q)) (u_x(p) . u_z(q)): "Gram" form, cost ~ n m P^2 (k^2 C_out + F),
    cheaper for late layers with few positions and many channels. Never the P-column Jacobian.
    """
    n, k, out_channels, positions = dx.shape
    m, features = dz.shape[0], ux.shape[1]
    gradient_cost = k * k * out_channels * features + (n + m) * k * out_channels * features * positions / (n * m)
    gram_cost = positions**2 * (k * k * out_channels + features)
    if gradient_cost <= gram_cost:
        grad_x = torch.einsum("nkop,nfp->nkof", dx, ux).reshape(n * k, -1)
        grad_z = grad_x if symmetric else torch.einsum("nkop,nfp->nkof", dz, uz).reshape(m * k, -1)
        theta.addmm_(grad_x, grad_z.T, alpha=scale)
        return
    # Gram form, in blocks of inputs so that the (rows k P, cols k P) products stay small.
    rows = max(1, int(((1 << 22) / (k * positions) ** 2) ** 0.5))
    D_x = dx.permute(0, 1, 3, 2).reshape(n * k * positions, out_channels)  # (n k P, C_out)
    D_z = dz.permute(0, 1, 3, 2).reshape(m * k * positions, out_channels)
    U_x = ux.transpose(1, 2).reshape(n * positions, features)  # (n P, F)
    U_z = uz.transpose(1, 2).reshape(m * positions, features)
    view = theta.view(n, k, m, k)
    for i in range(0, n, rows):
        i2 = min(i + rows, n)
        for j in range(0, m, rows):
            j2 = min(j + rows, m)
            signal = D_x[i * k * positions: i2 * k * positions] @ D_z[j * k * positions: j2 * k * positions].T
            signal = signal.view(i2 - i, k, positions, j2 - j, k, positions)
            patch = (U_x[i * positions: i2 * positions] @ U_z[j * positions: j2 * positions].T).view(
                i2 - i, 1, positions, j2 - j, 1, positions)  # fmt: skip
            view[i:i2, :, j:j2, :] += (signal * patch).sum(dim=(2, 5)).mul_(scale)


# ------------------------------------------------------------------------ torch.func methods


def _jacobian_ntk(model: nn.Module, params: dict[str, Tensor], X: Tensor, Z: Tensor | None, k: int) -> Tensor:
    """J(X) J(Z)^T with per-sample Jacobians from vmap(jacrev), as (n, m, k, k)."""

    def f(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, p, (x[None],)).reshape(k)

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


__all__ = ["Kernels", "empirical_ntk"]
