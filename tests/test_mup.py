"""The maximal update parameterisation (muP) against a hand-written muP network.

Yang et al. 2021 (Tensor Programs V), Table 3, for SGD: with fan_in/fan_out of each layer,
input weights have variance W_std^2 / fan_in and learning rate lr * fan_out, hidden weights
variance W_std^2 / fan_in and lr, output weights variance W_std^2 / fan_in^2 and lr / fan_in,
all biases variance b_std^2 and lr * fan_out. ntklib realises this with parameters and
multipliers so that plain SGD with one lr follows the table; the tests write the table out
directly on the effective weights and compare.
"""

from __future__ import annotations

import math

import pytest
import torch

import ntklib as nk

F64 = torch.float64


def hand_written(effective, x):
    """f(x) for a 2-hidden-layer ReLU MLP from its effective weights and biases."""
    (W1, b1), (W2, b2), (W3, b3) = effective
    h = torch.relu(x @ W1.T + b1)
    h = torch.relu(h @ W2.T + b2)
    return h @ W3.T + b3


def test_initial_variances_follow_the_table():
    d, k = 5, 2000
    net = nk.MLP(d, k, 2, W_std=1.3, b_std=0.4, parameterization="mup", generator=torch.Generator().manual_seed(0),
                 dtype=F64)  # fmt: skip
    roles = [layer.role for layer in net.layers]
    assert roles == ["input", "hidden", "output"]
    expected = [1.3**2 / d, 1.3**2 / k, 1.3**2 / k**2]
    for layer, variance in zip(net.layers, expected):
        effective = layer.weight_scale * layer.weight.detach()
        assert float(effective.var()) == pytest.approx(variance, rel=0.05)
        bias = layer.bias_scale * layer.bias.detach()
        if bias.numel() > 100:
            assert float(bias.var()) == pytest.approx(0.4**2, rel=0.1)


def test_one_sgd_step_trains_each_layer_at_its_rate():
    """After one nk.train step with lr, each layer's effective weights moved by -lr * m times
    the gradient with respect to the effective weights, m from the table."""
    d, k, lr = 4, 64, 0.05
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(10, d, generator=gen, dtype=F64)
    y = torch.randn(10, generator=gen, dtype=F64)
    net = nk.MLP(d, k, 2, W_std=1.2, b_std=0.3, parameterization="mup", generator=gen, dtype=F64)
    effective = [(layer.weight_scale * layer.weight.detach().clone(), layer.bias_scale * layer.bias.detach().clone())
                 for layer in net.layers]  # fmt: skip
    # the table, on the effective weights: gradient of the book's loss, rate per layer
    leaves = [(W.clone().requires_grad_(), b.clone().requires_grad_()) for W, b in effective]
    loss = 0.5 * (hand_written(leaves, X)[:, 0] - y).square().sum() / 10
    grads = torch.autograd.grad(loss, [t for pair in leaves for t in pair])
    torch.testing.assert_close(net(X), hand_written(effective, X), rtol=1e-13, atol=1e-14)
    rates = [(k, k), (1.0, k), (1.0 / k, 1.0)]  # (weight m, bias m): input, hidden, output
    nk.train(net, X, y, lr=lr, steps=1)
    for index, (layer, (W, b), (m_W, m_b)) in enumerate(zip(net.layers, effective, rates)):
        torch.testing.assert_close(layer.weight_scale * layer.weight.detach(), W - lr * m_W * grads[2 * index],
                                   rtol=1e-10, atol=1e-13)  # fmt: skip
        torch.testing.assert_close(layer.bias_scale * layer.bias.detach(), b - lr * m_b * grads[2 * index + 1],
                                   rtol=1e-10, atol=1e-13)  # fmt: skip


def test_output_vanishes_with_width_at_initialisation():
    """muP's outputs are O(1/sqrt(width)) at initialisation (the readout's variance 1/fan_in^2)."""
    X = torch.randn(50, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    spreads = []
    for k in (64, 1024):
        outs = torch.cat([nk.MLP(3, k, 1, parameterization="mup", generator=torch.Generator().manual_seed(s),
                                 dtype=F64)(X) for s in range(20)])  # fmt: skip
        spreads.append(float(outs.detach().std()))
    assert spreads[0] / spreads[1] == pytest.approx(math.sqrt(1024 / 64), rel=0.25)


def test_roles_and_errors():
    conv = nk.serial(nk.Conv(8, 3, padding="same", parameterization="mup"), nk.Relu(),
                     nk.Conv(8, 3, padding="same", parameterization="mup"), nk.Relu(), nk.GlobalAvgPool(),
                     nk.Dense(1, parameterization="mup"))  # fmt: skip
    model = conv.init((1, 6, 6), dtype=F64)
    assert [m.role for m in model.modules() if isinstance(m, nk.layers.WeightModule)] == ["input", "hidden", "output"]
    with pytest.raises(ValueError, match="no fixed infinite-width kernels"):
        conv.kernels(torch.randn(3, 1, 6, 6, dtype=F64))
    shared = nk.Dense(4, parameterization="mup")
    with pytest.raises(ValueError, match="appears twice in the network with different muP roles"):
        nk.serial(shared, nk.Relu(), nk.Dense(4, parameterization="mup"), nk.Relu(), shared).init(4)
    with pytest.raises(ValueError, match="unknown muP role 'first'"):
        nk.layers.DenseModule(3, 4, parameterization="mup", role="first")
