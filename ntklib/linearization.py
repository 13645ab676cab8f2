"""The linearisation of a model around its initial parameters (Lee et al. 2019)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torch.func import functional_call, jvp

from ._checks import as_inputs



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
        """params: name -> tensor shaped as theta_0; x: ``(n, *in_shape)``. Returns what model(x) would."""
        x, _ = as_inputs(x, None, names=("x", "z"))
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
