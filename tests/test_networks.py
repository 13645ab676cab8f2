"""ntklib.networks: the MLP and its Dense layers against neural-tangents' stax conventions."""

import math
import pickle

import pytest
import torch

from ntklib.networks import MLP
from conftest import randn

F64 = torch.float64


def test_layers_shapes_and_parameter_names(device):
    net = MLP(3, 7, depth=2, out_features=4, b_std=0.1, dtype=F64, device=device)
    assert [layer.weight.shape for layer in net.layers] == [(7, 3), (7, 7), (4, 7)]
    assert [layer.bias.shape for layer in net.layers] == [(7,), (7,), (4,)]
    assert [name for name, _ in net.named_parameters()] == [
        "body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias", "body.4.weight", "body.4.bias",
    ]
    out = net(torch.ones(5, 3, dtype=F64, device=device))
    assert out.shape == (5, 4) and out.dtype == F64 and out.device.type == device.type
    assert all(p.device.type == device.type and p.dtype == F64 for p in net.parameters())


def test_no_bias_means_no_bias_parameter():
    net = MLP(2, 4, depth=2, b_std=None)
    assert all(layer.bias is None and layer.bias_scale == 0.0 for layer in net.layers)
    assert [name for name, _ in net.named_parameters()] == ["body.0.weight", "body.2.weight", "body.4.weight"]


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_initial_parameter_statistics(parameterization):
    """Weights of the (fan_in=50, fan_out=2000) first layer: 100,000 N(0, s^2) draws, with
    s = 1 ("ntk") or W_std / sqrt(fan_in) ("standard"). The sample mean has standard error
    s / sqrt(N) and the sample variance s^2 sqrt(2 / N); we allow 6 standard errors. Biases: 2000
    draws of N(0, 1) ("ntk") or N(0, b_std^2) ("standard")."""
    W_std, b_std, fan_in, width = 1.7, 0.6, 50, 2000
    net = MLP(fan_in, width, depth=1, W_std=W_std, b_std=b_std, parameterization=parameterization,
              generator=torch.Generator().manual_seed(0), dtype=F64)
    layer = net.hidden[0]
    w_std = W_std / math.sqrt(fan_in) if parameterization == "standard" else 1.0
    bias_std = b_std if parameterization == "standard" else 1.0
    for values, std in [(layer.weight.detach(), w_std), (layer.bias.detach(), bias_std)]:
        N = values.numel()
        assert abs(float(values.mean())) < 6 * std / math.sqrt(N)
        assert abs(float(values.var()) - std**2) < 6 * std**2 * math.sqrt(2 / N)
    expected_scales = (W_std / math.sqrt(fan_in), b_std) if parameterization == "ntk" else (1.0, 1.0)
    assert (layer.weight_scale, layer.bias_scale) == pytest.approx(expected_scales, rel=1e-15)


@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_forward_is_the_stax_formula(parameterization, rng):
    """One hidden layer written out by hand from the stored parameters."""
    W_std, b_std, d, w = 1.3, 0.4, 3, 6
    net = MLP(d, w, depth=1, activation="erf", W_std=W_std, b_std=b_std, parameterization=parameterization,
              generator=rng, dtype=F64)
    x = randn(4, d, generator=rng, device="cpu")
    (W1, b1), (W2, b2) = [(layer.weight.detach(), layer.bias.detach()) for layer in net.layers]
    if parameterization == "ntk":
        h = W_std / math.sqrt(d) * x @ W1.T + b_std * b1
        f = W_std / math.sqrt(w) * torch.special.erf(h) @ W2.T + b_std * b2
    else:
        f = torch.special.erf(x @ W1.T + b1) @ W2.T + b2
    torch.testing.assert_close(net(x), f, rtol=1e-14, atol=1e-14)


def test_both_parameterizations_give_the_same_initial_function(rng):
    """Seeded alike, "standard" draws the same normals as "ntk" times the scales that "ntk"
    applies in the forward pass: the functions agree at initialisation (only gradients differ)."""
    x = randn(5, 4, generator=rng, device="cpu")
    nets = [MLP(4, 16, depth=3, activation="relu", W_std=1.4, b_std=0.3, parameterization=p,
                generator=torch.Generator().manual_seed(7), dtype=F64) for p in ("ntk", "standard")]
    torch.testing.assert_close(nets[0](x), nets[1](x), rtol=1e-13, atol=1e-13)


REFERENCE = {
    "relu": torch.relu,
    "erf": torch.special.erf,
    "identity": lambda u: u.clone(),
    "leaky_relu": lambda u: torch.nn.functional.leaky_relu(u, 0.2),
    "abs": torch.abs,
}


@pytest.mark.parametrize("activation", sorted(REFERENCE))
def test_activation_and_its_derivative_match_autograd(activation):
    net = MLP(1, 1, depth=1, activation=activation, negative_slope=0.2, dtype=F64)
    h = torch.tensor([-2.0, -0.3, 0.0, 0.5, 3.0], dtype=F64, requires_grad=True)
    torch.testing.assert_close(net.phi(h), REFERENCE[activation](h), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(REFERENCE[activation](h).sum(), h)
    # Autograd's value at the kink h = 0 too, so that the structured NTK matches it exactly.
    torch.testing.assert_close(net.phi_prime(h.detach()), grad, rtol=1e-15, atol=1e-15)


def test_generator_gives_the_same_network_on_every_device(device):
    cpu = MLP(3, 8, depth=2, b_std=0.5, generator=torch.Generator().manual_seed(3), dtype=F64)
    there = MLP(3, 8, depth=2, b_std=0.5, generator=torch.Generator().manual_seed(3), dtype=F64, device=device)
    for a, b in zip(cpu.parameters(), there.parameters()):
        assert b.device.type == device.type
        torch.testing.assert_close(a, b.cpu(), rtol=0, atol=0)
    other = MLP(3, 8, depth=2, b_std=0.5, generator=torch.Generator().manual_seed(4), dtype=F64)
    assert not torch.equal(cpu.readout.weight, other.readout.weight)


def test_pickle_round_trip():
    net = MLP(2, 5, depth=1, activation="leaky_relu", negative_slope=0.3)
    copy = pickle.loads(pickle.dumps(net))
    x = torch.randn(3, 2)
    torch.testing.assert_close(copy(x), net(x), rtol=0, atol=0)
    assert "LeakyRelu(slope=0.3)" in repr(copy)


@pytest.mark.parametrize("W_std, b_std", [(3.0, 0.5), (1.0, None), (2.0, 1.0), (2.0, 0.0)])
@pytest.mark.parametrize("parameterization", ["ntk", "standard"])
def test_dense_layers_scale_weights_and_biases(W_std, b_std, parameterization, rng):
    """Each Dense layer of an MLP computes W_std / sqrt(fan_in) x.W^T + b_std b ("ntk") or
    x.W^T + b ("standard") from its stored parameters. With fan_in = 4 (first layer) and 2
    (readout), W_std = 3 scales by 1.5 and 2.12, W_std = 1 by 0.5 and 0.71; W_std = 2 gives
    scale 1 on the first layer and b_std = 1 a unit bias scale (the forward pass skips those
    multiplications, so they are checked too); b_std = 0 keeps a bias parameter that has no
    effect on the output, b_std = None has none."""
    net = MLP(4, 2, depth=1, W_std=W_std, b_std=b_std, parameterization=parameterization,
              generator=rng, dtype=F64)  # fmt: skip
    for layer, fan_in in zip(net.layers, (4, 2)):
        x = randn(3, fan_in, generator=rng, device="cpu")
        weight = layer.weight.detach()
        scale = W_std / math.sqrt(fan_in) if parameterization == "ntk" else 1.0
        expected = scale * x @ weight.T
        if b_std is None:
            assert layer.bias is None
        else:
            expected = expected + (b_std if parameterization == "ntk" else 1.0) * layer.bias.detach()
        torch.testing.assert_close(layer(x), expected, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"activation": "tanh"}, ValueError, "unknown activation 'tanh'; expected one of: abs, erf, gelu, identity, leaky_relu, relu"),
        ({"activation": None}, TypeError, "activation must be a string"),
        ({"parameterization": "ntp"}, ValueError, "unknown parameterization 'ntp'; expected one of: ntk, standard, mup"),
        ({"depth": 0}, ValueError, "depth must be >= 1"),
        ({"width": 0}, ValueError, "width must be >= 1"),
        ({"width": 2.5}, TypeError, "width must be an integer"),
        ({"in_features": 0}, ValueError, "in_features must be >= 1"),
        ({"out_features": 0}, ValueError, "out_features must be >= 1"),
        ({"W_std": -1.0}, ValueError, "W_std must be >= 0"),
        ({"W_std": float("nan")}, ValueError, "W_std must be finite"),
        ({"b_std": -0.1}, ValueError, "b_std must be >= 0"),
        ({"b_std": float("nan")}, ValueError, "b_std must be finite"),
        ({"dtype": torch.int64}, TypeError, "dtype must be a floating-point"),
    ],
)
def test_constructor_errors(kwargs, error, message):
    args = {"in_features": 3, "width": 4, "depth": 1, **kwargs}
    with pytest.raises(error, match=message):
        MLP(**args)


def test_forward_errors():
    net = MLP(3, 4, depth=1, dtype=F64)
    with pytest.raises(ValueError, match=r"x has 2 features but this MLP expects in_features=3"):
        net(torch.ones(5, 2, dtype=F64))
    with pytest.raises(ValueError, match=r"x must have shape \(n, 3\) for this network; got \(3,\) \(for a single input use x\[None\]\)"):
        net(torch.ones(3, dtype=F64))
    with pytest.raises(TypeError, match="x has dtype torch.float32 but the MLP's parameters are torch.float64"):
        net(torch.ones(5, 3, dtype=torch.float32))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        net([[1.0, 2.0, 3.0]])
