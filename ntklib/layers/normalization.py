"""LayerNorm: normalise each input's units to zero mean and unit variance.

At infinite width the mean over a layer's units of zero-mean Gaussian units is 0 and their
mean square is the input's variance Sigma(x, x), so the kernel rule divides by the variances:
Sigma(x, z) <- Sigma(x, z) / sqrt((eps + Sigma(x, x)) (eps + Sigma(z, z))), the same for the NTK,
pixel by pixel for images (normalised over channels), as neural-tangents' ``stax.LayerNorm``.
"""

from __future__ import annotations

from torch import Tensor, nn

from .._checks import positive_real
from .base import Layer, LayerError
from .state import pixel_diagonal


class LayerNorm(Layer):
    """Normalise over features (vectors) or over channels at each pixel (images).

    Args:
        eps: added to the variance before the square root (neural-tangents' default).
    """

    uses_variances = True

    def __init__(self, eps: float = 1e-12) -> None:
        self.eps = positive_real("eps", eps)

    def __repr__(self) -> str:
        return f"LayerNorm(eps={self.eps:g})"

    def output_shape(self, in_shape):
        in_shape = self._single(in_shape)
        if in_shape[0] < 2:
            raise LayerError(f"{self!r} normalises over {in_shape[0]} feature(s) of inputs of shape {in_shape}: "
                             "the variance of a single feature is 0; it needs at least 2")  # fmt: skip
        return in_shape

    def build(self, in_shape, context):
        return LayerNormModule(self.eps)

    def kernel(self, state):
        state = self._single(state)
        self.output_shape(state.shape)
        if not state.is_gaussian:
            raise LayerError(f"{self!r} needs Gaussian (zero-mean) inputs, which the kernel rule assumes: put it "
                             "right after a Dense or Conv layer, not after an activation")  # fmt: skip
        q1, q2 = state.pixel_variances()
        scale = ((q1 + self.eps) * (q2 + self.eps)).rsqrt_()
        cov1 = None if state.cov1 is None else self._self_map(state.cov1, state)
        cov2 = None if state.cov2 is None else self._self_map(state.cov2, state)
        return state.replace(nngp=state.nngp.mul_(scale), ntk=state.ntk.mul_(scale), cov1=cov1, cov2=cov2)

    def _self_map(self, cov: Tensor, state) -> Tensor:
        k = len(state.spatial)
        q = pixel_diagonal(cov, k, state.cov_full) + self.eps  # (n, *S)
        if not state.cov_full or k == 0:
            return cov / q
        ones = (1,) * k
        rows = q.reshape(q.shape[0], *state.spatial, *ones)
        cols = q.reshape(q.shape[0], *ones, *state.spatial)
        return cov.mul_((rows * cols).rsqrt_())


class LayerNormModule(nn.Module):
    """(h - mean) / sqrt(var + eps) over dim 1 (features, or channels at each pixel)."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, h: Tensor) -> Tensor:
        mean = h.mean(dim=1, keepdim=True)
        var = (h - mean).square().mean(dim=1, keepdim=True)
        return (h - mean) / (var + self.eps).sqrt()

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"
