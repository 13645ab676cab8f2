"""The fast paths of the kernel rules against plain references: image patches against
F.unfold, pixel-wise Gram matrices against einsum, window sums in place against convolutions
and loops, and the in-place ReLU-family update against the dual map it rearranges."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.nn import functional as F

from ntklib.layers.activations import ABReluDual
from ntklib.layers.spatial import pad_images, patches, window_sum
from ntklib.layers.state import pair_gram

F64 = torch.float64


@pytest.mark.parametrize(
    "shape, window, stride, padding",
    [((5, 3, 8, 7), (3, 2), (2, 1), "same"), ((5, 3, 8, 7), (3, 3), (1, 1), "valid"),
     ((4, 2, 6, 6), (2, 3), (1, 2), "circular"), ((4, 2, 9), (3,), (2,), "circular"), ((4, 2, 9), (4,), (1,), "same")],
)  # fmt: skip
def test_patches_equal_unfold(shape, window, stride, padding):
    x = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(0))
    padded = pad_images(x, window, stride, padding)
    if padded.ndim == 3:  # F.unfold is 2-D only
        expected = F.unfold(padded[:, :, None, :], (1, *window), stride=(1, *stride))
    else:
        expected = F.unfold(padded, window, stride=stride)
    assert torch.equal(patches(x, window, stride, padding), expected)


@pytest.mark.parametrize("features", [1, 9, 40])  # both sides of the few-features path
def test_pixelwise_gram_is_einsum_and_contiguous(features):
    gen = torch.Generator().manual_seed(1)
    A, B = torch.randn(6, features, 12, dtype=F64, generator=gen), torch.randn(5, features, 12, dtype=F64, generator=gen)
    gram = pair_gram(A, B, (3, 4), full=False)
    expected = torch.einsum("ifp,jfp->ijp", A, B).reshape(6, 5, 3, 4) / features
    torch.testing.assert_close(gram, expected, rtol=1e-14, atol=1e-14)
    assert gram.is_contiguous()  # every later pass over the kernel runs on it


@pytest.mark.parametrize("with_pool", [False, True])
def test_gram_over_all_pixel_pairs_is_einsum_and_contiguous(with_pool):
    """The full layout: one matrix product rearranged to (n1, n2, *S, *S); with a pool, the
    product's memory is handed back to it once the rearranged copy exists."""
    from ntklib.layers.state import TensorPool

    gen = torch.Generator().manual_seed(6)
    A, B = torch.randn(6, 9, 12, dtype=F64, generator=gen), torch.randn(5, 9, 12, dtype=F64, generator=gen)
    pool = TensorPool() if with_pool else None
    gram = pair_gram(A, B, (3, 4), full=True, pool=pool)
    expected = torch.einsum("ifp,jfq->ijpq", A, B).reshape(6, 5, 3, 4, 3, 4) / 9
    torch.testing.assert_close(gram, expected, rtol=1e-14, atol=1e-14)
    assert gram.is_contiguous()
    if with_pool:
        (product,) = pool._free
        assert product.shape == (6 * 12, 5 * 12) and product.data_ptr() != gram.data_ptr()


def _conv_window_sum_diagonal(T: torch.Tensor, window: tuple[int, int], padding: str) -> torch.Tensor:
    """Reference for the diagonal layout: a convolution of every (i, j) image with a window of ones."""
    batch, (H, W) = T.shape[:-2], T.shape[-2:]
    padded = pad_images(T.reshape(-1, 1, H, W), window, (1, 1), padding)
    out = F.conv2d(padded, torch.ones(1, 1, *window, dtype=T.dtype))
    return out.reshape(*batch, *out.shape[-2:])


def _loop_window_sum_full(T: torch.Tensor, window: int) -> torch.Tensor:
    """Reference for the full layout, zero "same" padding, 1-D: out[p, q] = sum_d T[p + d - b, q + d - b]."""
    size, before = T.shape[-1], (window - 1) // 2
    out = torch.zeros_like(T)
    for p, q, d in itertools.product(range(size), range(size), range(window)):
        a, b = p + d - before, q + d - before
        if 0 <= a < size and 0 <= b < size:
            out[..., p, q] += T[..., a, b]
    return out


@pytest.mark.parametrize("window, padding", [((3, 3), "same"), ((2, 3), "same"), ((3, 2), "valid"), ((3, 3), "circular"),
                                             ((1, 3), "same"), ((1, 1), "circular")])
def test_window_sum_in_place_with_scratch_equals_a_convolution(window, padding):
    T = torch.randn(4, 3, 6, 5, dtype=F64, generator=torch.Generator().manual_seed(2))
    expected = _conv_window_sum_diagonal(T, window, padding)
    plain = window_sum(T.clone(), (6, 5), window, (1, 1), padding, full=False, paired=True)
    scratch = torch.full_like(T, float("nan"))  # its values must not matter
    in_place = window_sum(T.clone(), (6, 5), window, (1, 1), padding, full=False, paired=True, scratch=scratch)
    torch.testing.assert_close(plain, expected, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(in_place, expected, rtol=1e-13, atol=1e-13)


def test_paired_window_sum_over_pixel_pairs_in_place():
    T = torch.randn(3, 2, 7, 7, dtype=F64, generator=torch.Generator().manual_seed(3))
    expected = _loop_window_sum_full(T, 3)
    out = window_sum(T.clone(), (7,), (3,), (1,), "same", full=True, paired=True, scratch=torch.empty_like(T))
    torch.testing.assert_close(out, expected, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("a, b", [(0.0, 1.0), (-1.0, 1.0), (0.2, 1.0), (-0.5, 1.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_in_place_update_equals_the_dual_map(a, b, dtype):
    """ABReluDual.update (in place, per-input factors) against __call__ (out of place, the
    quadrature-tested form), on inputs with a zero row, a duplicate pair and a huge row."""
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(6, 4, dtype=F64, generator=gen)
    X[1] = 0.0
    X[3] = X[2]
    X[5] *= 1e3
    X = X.to(dtype)
    s = X @ X.T / 4
    s[2, 3] = s[3, 2] = s[2, 2] = s[3, 3]  # an exact duplicate, whatever the matrix product rounds
    q = s.diagonal().clone()
    ntk = torch.rand(6, 6, dtype=F64, generator=gen).to(dtype) + s
    dual = ABReluDual(a, b)
    nngp_ref, derivative = dual(q[:, None], q[None, :], s.clone())
    ntk_ref = ntk * derivative
    scratch = torch.empty_like(s)
    nngp, ntk_out = dual.update(q[:, None], q[None, :], s.clone(), ntk.clone(), scratch)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(nngp, nngp_ref, rtol=tol, atol=tol * float(nngp_ref.abs().max()))
    torch.testing.assert_close(ntk_out, ntk_ref, rtol=tol, atol=tol * float(ntk_ref.abs().max()))
    assert bool((nngp[1] == 0).all())  # a zero input stays exactly 0
    # A duplicate pair has cos t = 1 exactly: E[phi phi] = half s and E[phi' phi'] = half, with
    # half = (a^2 + b^2) / 2, to the last bit.
    half = (a * a + b * b) / 2
    assert float(nngp[2, 3]) == float(s[2, 3] * half) and float(ntk_out[2, 3]) == float(ntk[2, 3] * half)


@pytest.mark.parametrize("a, b", [(0.0, 1.0), (-1.0, 1.0), (-0.5, 1.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_variance_closed_form_equals_the_dual_map_of_an_input_with_itself(a, b, dtype):
    """ABReluDual.variance(q) = (a^2 + b^2)/2 q against the dual map at s = q_a = q_b, through
    its arccos (t = 0), from a zero variance to ones whose square overflows float32."""
    q = torch.tensor([0.0, 1e-30, 0.3, 1.0, 7.5, 1e30], dtype=F64).to(dtype)
    dual = ABReluDual(a, b)
    expected = dual(q, q, q.clone())[0]
    tol = 1e-6 if dtype == torch.float32 else 1e-15
    torch.testing.assert_close(dual.variance(q), expected, rtol=tol, atol=0.0)


def test_quadrature_dual_maps_survive_variances_whose_product_overflows():
    """float32 variances of about 1e20: q_a q_b overflows, sqrt(q_a) sqrt(q_b) does not. The
    Hermite series of phi(u) = 2u gives 4 s; the polar quadrature of 2 relu(u) gives 4 times
    the arc-cosine kernel (in float64 at a scale where nothing overflows, then scaled)."""
    import ntklib as nk
    from ntklib.layers.activations import compose

    q = torch.tensor([[1.0], [2.0]], dtype=F64)
    s = torch.tensor([[1.0, 0.5], [0.5, 2.0]], dtype=F64)
    big = 1e20
    q32, s32 = (q * big).float(), (s * big).float()
    double = nk.Elementwise(lambda u: 2 * u, name="double")
    nngp, derivative = double.dual(q32, q32.T, s32.clone())
    torch.testing.assert_close(nngp.double(), 4 * s * big, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(derivative.double(), torch.full_like(s, 4.0), rtol=1e-5, atol=0.0)
    composite = compose(nk.Relu(), double)
    nngp, derivative = composite.dual(q32, q32.T, s32.clone())
    arc_nngp, arc_derivative = ABReluDual(0.0, 1.0)(q, q.T, s.clone())
    torch.testing.assert_close(nngp.double(), 4 * arc_nngp * big, rtol=1e-4, atol=0.0)
    torch.testing.assert_close(derivative.double(), 4 * arc_derivative, rtol=1e-4, atol=0.0)


def test_elementwise_activation_in_float32_matches_float64():
    """The Hermite coefficients are computed in float64: a float32 network with tanh neither
    raises (its tails are below float32's resolution) nor loses more than float32 rounding."""
    import ntklib as nk

    X = torch.randn(6, 3, generator=torch.Generator().manual_seed(5))
    for activation in (nk.Elementwise(torch.tanh), nk.Elementwise(torch.sin)):
        k32 = nk.infinite_width_kernels(X, depth=2, activation=activation, b_std=0.1)
        k64 = nk.infinite_width_kernels(X.double(), depth=2, activation=activation, b_std=0.1)
        for a, b in zip(k32, k64):
            assert a.dtype == torch.float32
            torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_tensor_pool_hands_out_only_free_whole_tensors():
    from ntklib.layers.state import TensorPool

    pool = TensorPool(capacity=2)
    a, b = torch.empty(4, 3, dtype=F64), torch.empty(4, 3, dtype=F64)
    pool.give(a, a[:2], a.T, torch.empty(4, 3, requires_grad=True), None)  # views and grad tensors are refused
    pool.give(a)  # the same storage twice is kept once
    assert pool.take((4, 3), b) is a
    assert pool.take((4, 3), b) is not a  # taken: a new one now
    pool.give(torch.empty(2, dtype=F64), torch.empty(3, dtype=F64), torch.empty(5, dtype=F64))
    assert [tuple(t.shape) for t in pool._free] == [(3,), (5,)]  # at most capacity, the newest
    assert pool.take((3,), torch.empty(0, dtype=torch.float32)).dtype == torch.float32  # dtypes must match
    # Any free tensor of as many entries serves, viewed in the shape asked for; the view owns
    # the whole storage, so it goes back to the pool like the original.
    c = torch.empty(4, 6, dtype=F64)
    pool.give(c)
    d = pool.take((3, 8), b)
    assert d.shape == (3, 8) and d.data_ptr() == c.data_ptr() and c.data_ptr() not in [t.data_ptr() for t in pool._free]
    pool.give(d)
    assert pool.take((24,), b).data_ptr() == c.data_ptr()
