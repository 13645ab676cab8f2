"""Training dynamics: closed-form gradient flow against an ODE solution by the matrix exponential,
kernel regression, discrete gradient descent, a wide network trained by nk.train, and
neural-tangents' ``predict`` module (tests/data/make_neural_tangents_predict_reference.py)."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch

import ntklib as nk
from ntklib.training import _show_progress
from conftest import randn

F64 = torch.float64


def features_and_kernels(rng, device, n=7, m=3, rank=4):
    """K = Phi_X Phi_X^T and K_ZX = Phi_Z Phi_X^T from random features: PSD, and singular (with
    n - rank zero eigenvalues) when rank < n."""
    Phi = randn(n + m, rank, generator=rng, device=device) / math.sqrt(rank)
    return Phi[:n] @ Phi[:n].T, Phi[n:] @ Phi[:n].T


def ode_solution(K, K_ZX, y, f0, f0_test, t, lr):
    """The ODE d(f - y)/dt = -(lr/n) K (f - y), d f_Z/dt = -(lr/n) K_ZX (f - y), solved by
    torch.linalg.matrix_exp of the joint (n + m) x (n + m) generator (no eigendecomposition)."""
    n, m = K.shape[0], K_ZX.shape[0]
    M = torch.zeros(n + m, n + m, dtype=K.dtype, device=K.device)
    M[:n, :n], M[n:, :n] = -lr / n * K, -lr / n * K_ZX
    u0 = torch.cat([(f0 - y).reshape(n, -1), f0_test.reshape(m, -1)])
    u = torch.linalg.matrix_exp(t * M) @ u0
    return (u[:n] + y.reshape(n, -1)).reshape(y.shape), u[n:].reshape(f0_test.shape)


@pytest.mark.parametrize("outputs", [None, 2])
@pytest.mark.parametrize("rank", [4, 12])
def test_closed_form_matches_the_matrix_exponential(device, rng, outputs, rank):
    """Singular (rank 4 < n = 7) and invertible K, one and two outputs, times 0 ... 15."""
    K, K_ZX = features_and_kernels(rng, device, rank=rank)
    shape = (7,) if outputs is None else (7, outputs)
    y, f0 = randn(*shape, generator=rng, device=device), randn(*shape, generator=rng, device=device)
    f0_test = randn(3, *shape[1:], generator=rng, device=device)
    times, lr = [0.0, 0.3, 2.0, 15.0], 0.7
    flow = nk.gradient_flow(K, y, f0, times, lr, K_ZX, f0_test)
    assert flow.train.shape == (4, *shape) and flow.test.shape == (4, 3, *shape[1:])
    assert flow.train.device.type == device.type and flow.test.dtype == F64
    for i, t in enumerate(times):
        train, test = ode_solution(K, K_ZX, y, f0, f0_test, t, lr)
        torch.testing.assert_close(flow.train[i], train, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(flow.test[i], test, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(flow.train[0], f0, rtol=0, atol=1e-14)  # t = 0 is the start


def test_infinite_time_is_kernel_regression(device, rng):
    """t = inf: train outputs are y, test outputs f0_test + K_ZX K^-1 (y - f0): with f0 = 0,
    kernel ridge regression at ridge 0 (nk.KernelRidge, nk.solve_kernel_system)."""
    X, Z = randn(7, 12, generator=rng, device=device), randn(3, 12, generator=rng, device=device)
    y = randn(7, generator=rng, device=device)
    K, K_ZX = nk.linear_kernel(X), nk.linear_kernel(Z, X)
    flow = nk.gradient_flow(K, y, None, math.inf, 0.5, K_ZX)
    assert torch.equal(flow.train, y)
    ridge = nk.KernelRidge(nk.linear_kernel, ridge=0.0).fit(X, y).predict(Z)
    torch.testing.assert_close(flow.test, ridge, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(flow.test, K_ZX @ nk.solve_kernel_system(K, y), rtol=1e-10, atol=1e-10)
    # Non-zero start, and a long finite time (lr t lam_min / n >> 1) reaching the same limit.
    f0, f0_test = randn(7, generator=rng, device=device), randn(3, generator=rng, device=device)
    late = nk.gradient_flow(K, y, f0, [1e7, math.inf], 0.5, K_ZX, f0_test)
    expected = f0_test + K_ZX @ nk.solve_kernel_system(K, y - f0)
    torch.testing.assert_close(late.test[1], expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(late.test[0], expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(late.train[0], y, rtol=1e-10, atol=1e-10)


def test_scalar_vector_and_multi_output_times_agree(rng):
    K, K_ZX = features_and_kernels(rng, "cpu", rank=9)
    y = randn(7, 2, generator=rng, device="cpu")
    times = [0.0, 1.5, math.inf]
    flow = nk.gradient_flow(K, y, None, torch.tensor(times), 0.3, K_ZX)
    for i, t in enumerate(times):
        single = nk.gradient_flow(K, y, None, t, 0.3, K_ZX)
        assert single.train.shape == (7, 2) and single.test.shape == (3, 2)
        torch.testing.assert_close(single.train, flow.train[i], rtol=0, atol=1e-14)
        for j in range(2):  # outputs evolve independently: K (x) I
            column = nk.gradient_flow(K, y[:, j], None, t, 0.3, K_ZX)
            assert column.train.shape == (7,) and column.test.shape == (3,)
            torch.testing.assert_close(column.test, flow.test[i, :, j], rtol=1e-12, atol=1e-12)
    assert nk.gradient_flow(K, y[:, 0], None, 1.0, 0.3).test is None


def test_zero_eigenvalues_use_the_limit_lr_t_over_n():
    """With K = 0 nothing moves on the training points and f_Z(t) = f0_Z - (lr t / n) K_ZX (f0 - y)
    exactly; in float32 a rank-one K gives finite numbers whose null-space residual stays put."""
    K_ZX = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64)
    y, f0 = torch.tensor([1.0, 2.0, 3.0], dtype=F64), torch.tensor([0.5, 0.0, -1.0], dtype=F64)
    flow = nk.gradient_flow(torch.zeros(3, 3, dtype=F64), y, f0, [0.0, 2.0], 0.6, K_ZX, torch.tensor([0.25], dtype=F64))
    torch.testing.assert_close(flow.train, torch.stack([f0, f0]), rtol=0, atol=0)
    torch.testing.assert_close(flow.test[1], 0.25 - 0.6 * 2.0 / 3 * K_ZX @ (f0 - y), rtol=1e-15, atol=1e-15)
    K32 = torch.ones(3, 3)
    flow32 = nk.gradient_flow(K32, y.float(), f0.float(), [0.0, 1.0, 1e4], 1.0, K_ZX.float())
    assert torch.isfinite(flow32.train).all() and torch.isfinite(flow32.test).all()
    null = torch.tensor([1.0, -1.0, 0.0]) / math.sqrt(2)  # K32 @ null = 0
    torch.testing.assert_close(flow32.train[-1] @ null - y.float() @ null, (f0 - y).float() @ null, rtol=1e-5, atol=1e-5)


def test_gradient_descent_approaches_the_flow_at_rate_lr(device, rng):
    """nk.kernel_gradient_descent (alpha_{s+1} = alpha_s - (lr/n)(f0 + K alpha_s - y)) against the
    flow at t = s steps: per eigenvalue the gap (1 - h lam)^s - e^{-h lam s}, h = lr/n, is at most
    ~ h lam / (2e), so the error is O(lr) and halves with lr (at the same flow time lr s)."""
    K, K_ZX = features_and_kernels(rng, device, n=8, m=3, rank=20)
    y, f0 = randn(8, generator=rng, device=device), randn(8, generator=rng, device=device)
    f0_test = randn(3, generator=rng, device=device)
    lam_max = float(torch.linalg.eigvalsh(K)[-1])
    errors = []
    for lr, steps in ((0.2, 300), (0.1, 600)):
        alphas = nk.kernel_gradient_descent(K, y, lr, steps, f0=f0)  # (steps + 1, n)
        flow = nk.gradient_flow(K, y, f0, torch.arange(steps + 1), lr, K_ZX, f0_test)
        gap_train = (f0 + alphas @ K - flow.train).abs().max()  # K symmetric: (K alpha)^T = alpha^T K
        gap_test = (f0_test + alphas @ K_ZX.T - flow.test).abs().max()
        bound = lr / 8 * lam_max * float((f0 - y).norm())
        assert gap_train < bound and gap_test < bound * float(K_ZX.norm()) / float(torch.linalg.eigvalsh(K)[0])
        errors.append(float(torch.maximum(gap_train, gap_test)))
    assert 1.8 < errors[0] / errors[1] < 2.2


def test_wide_network_training_tracks_the_flow_with_the_initial_ntk(device):
    """nk.train on an MLP of width 4096 against its linearisation at initialisation.

    Lazy training: the NTK moves by O(1/sqrt(width)) (here < 1% relative), so the network's
    outputs follow GD on the linearised model, nk.kernel_gradient_descent with the initial
    empirical NTK, to 0.5% of max |y - f0|. That in turn differs from the flow by the step size,
    ~ (lr/n) lam_max / (2e) ~ 2% of the residual here: against gradient_flow the tolerance is 5%."""
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(8, 3, generator=gen, dtype=F64).to(device)
    Z = torch.randn(4, 3, generator=gen, dtype=F64).to(device)
    y = torch.sin(2 * X[:, 0])
    net = nk.MLP(3, 4096, 1, activation="erf", b_std=0.1, generator=gen, dtype=F64, device=device)
    with torch.no_grad():
        f0, f0_test = net(X)[:, 0], net(Z)[:, 0]
    K0, K0_ZX = nk.empirical_ntk(net, X), nk.empirical_ntk(net, Z, X)
    lr, steps = 0.25, 120
    run = nk.train(net, X, y, lr, steps, X_test=Z, record=10, record_ntk=[0, steps])
    assert run.steps.tolist() == list(range(0, 121, 10)) and run.train.shape == (13, 8) and run.test.shape == (13, 4)
    torch.testing.assert_close(run.ntk[0], K0, rtol=1e-12, atol=1e-12)
    assert float((run.ntk[1] - K0).norm() / K0.norm()) < 0.01
    scale = float((y - f0).abs().max())
    alphas = nk.kernel_gradient_descent(K0, y, lr, steps, f0=f0)[run.steps.to(device)]  # (13, n)
    assert float((run.train - (f0 + alphas @ K0)).abs().max()) < 0.005 * scale
    assert float((run.test - (f0_test + alphas @ K0_ZX.T)).abs().max()) < 0.005 * scale
    flow = nk.gradient_flow(K0, y, f0, run.steps, lr, K0_ZX, f0_test)
    assert float((run.train - flow.train).abs().max()) < 0.05 * scale
    assert float((run.test - flow.test).abs().max()) < 0.05 * scale
    assert float(run.loss[-1]) < 0.05 * float(run.loss[0])


def test_train_is_plain_sgd_in_place_with_the_stated_loss(rng):
    """One step equals torch.optim.SGD(lr) on L = 1/(2n) sum |f - y|^2 (sum over outputs); the
    model is updated in place; .grad is left alone; records follow the schedule."""
    X, Z = randn(5, 2, generator=rng, device="cpu"), randn(3, 2, generator=rng, device="cpu")
    y = randn(5, 2, generator=rng, device="cpu")
    net = nk.MLP(2, 16, 2, out_features=2, generator=torch.Generator().manual_seed(0), dtype=F64)
    reference = copy.deepcopy(net)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.05)
    run = nk.train(net, X, y, 0.05, 10, X_test=Z, record=3, record_ntk=True)
    for step in range(10):
        optimizer.zero_grad()
        loss = 0.5 * (reference(X) - y).square().sum() / 5
        if step == 0:
            torch.testing.assert_close(run.loss[0], loss.detach(), rtol=1e-14, atol=0)
        loss.backward()
        optimizer.step()
    for p, q in zip(net.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
        assert p.grad is None
    assert run.steps.tolist() == [0, 3, 6, 9, 10] and run.ntk_steps.tolist() == [0, 3, 6, 9, 10]
    assert run.train.shape == (5, 5, 2) and run.test.shape == (5, 3, 2) and run.ntk[0].shape == (5, 5, 2, 2)
    with torch.no_grad():
        torch.testing.assert_close(run.train[-1], net(X), rtol=0, atol=0)
        torch.testing.assert_close(run.test[-1], net(Z), rtol=0, atol=0)
    torch.testing.assert_close(run.loss, 0.5 * (run.train - y).square().sum(dim=(1, 2)) / 5, rtol=1e-14, atol=0)
    assert "5 records up to step 10" in repr(run)
    # Scalar targets: outputs (n, 1) are recorded as (n,); a list schedule; zero steps.
    net1 = nk.MLP(2, 8, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    run1 = nk.train(net1, X, y[:, 0], 0.05, 4, record=[4, 0, 0])
    assert run1.steps.tolist() == [0, 4] and run1.train.shape == (2, 5) and run1.test is None and run1.ntk == []
    assert nk.train(net1, X, y[:, 0], 0.05, 0).train.shape == (1, 5)


def test_default_record_thins_long_runs(monkeypatch):
    """record=None records every step, or every ceil(steps / MAX_DEFAULT_RECORDS)-th (+ the last)."""
    X = torch.ones(2, 1, dtype=F64)
    net = nk.MLP(1, 4, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    assert nk.train(net, X, X[:, 0], 0.01, 3).steps.tolist() == [0, 1, 2, 3]
    monkeypatch.setattr(nk.training, "MAX_DEFAULT_RECORDS", 4)
    run = nk.train(net, X, X[:, 0], 0.01, 10, record_ntk=4)
    assert run.steps.tolist() == [0, 3, 6, 9, 10] and run.ntk_steps.tolist() == [0, 4, 8, 10] and len(run.ntk) == 4


def test_divergence_names_the_step():
    X = torch.linspace(-1, 1, 6, dtype=F64)[:, None]
    net = nk.MLP(1, 32, 2, activation="identity", generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(ValueError, match=r"training diverged at step \d+: the loss is (nan|inf).*lr=100"):
        nk.train(net, X, X[:, 0], lr=100.0, steps=200)


def test_progress_bar(capsys):
    X = torch.ones(2, 1, dtype=F64)
    net = nk.MLP(1, 4, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    nk.train(net, X, X[:, 0], 0.01, 5, progress=True)
    assert "nk.train" in capsys.readouterr().err
    nk.train(net, X, X[:, 0], 0.01, 5)
    assert capsys.readouterr().err == ""
    assert not _show_progress(None, 10**6)  # silent under pytest (and off a terminal)


# --- Infinite ensembles ------------------------------------------------------------------------


def erf_kernels(rng, device, n=6, m=3):
    XZ = randn(n + m, 3, generator=rng, device=device)
    return nk.infinite_width_kernels(XZ, depth=2, activation="erf", W_std=1.3, b_std=0.2), n


@pytest.mark.parametrize("kind", ["ntk", "nngp"])
def test_ensemble_is_the_flow_pushed_through_a_gaussian_start(device, rng, kind):
    """f_t(Z) is affine in the start (f0(X), f0(Z)) ~ N(0, Sigma on X u Z): f_t(Z) = mean + L f0.
    L comes from gradient_flow itself (y = 0, one output per basis vector of the start), so
    cov = L Sigma L^T (Lee et al. 2019, sec. 2.3.1). "nngp" trains the readout only: the flow
    kernel is Sigma too."""
    k, n = erf_kernels(rng, device)
    Theta = k.ntk if kind == "ntk" else k.nngp
    Sigma, m = k.nngp, k.nngp.shape[0] - n
    y = randn(n, generator=rng, device=device)
    times = [0.0, 0.5, 3.0, math.inf]
    if kind == "ntk":
        got = nk.ntk_ensemble(Theta[:n, :n], Sigma[:n, :n], y, Theta[n:, :n], Sigma[n:, :n], Sigma[n:, n:], times, 0.8)
    else:
        got = nk.nngp_ensemble(Sigma[:n, :n], y, Sigma[n:, :n], Sigma[n:, n:], times, 0.8)
    eye = torch.eye(n + m, dtype=F64, device=device)
    flow = nk.gradient_flow(Theta[:n, :n], torch.zeros(n, n + m, dtype=F64, device=device), eye[:n], times, 0.8,
                            Theta[n:, :n], eye[n:])
    L = flow.test  # (T, m, n + m)
    mean = nk.gradient_flow(Theta[:n, :n], y, None, times, 0.8, Theta[n:, :n]).test
    torch.testing.assert_close(got.mean, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.cov, L @ Sigma @ L.transpose(1, 2), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got.cov[0], Sigma[n:, n:], rtol=1e-12, atol=1e-12)  # t = 0: the prior


def test_ensembles_at_infinity_and_gp_inference_agree(rng):
    k, n = erf_kernels(rng, "cpu")
    S, y = k.nngp, randn(n, 2, generator=rng, device="cpu")
    gp = nk.gp_inference(S[:n, :n], y, S[n:, :n], S[n:, n:])
    readout = nk.nngp_ensemble(S[:n, :n], y, S[n:, :n], S[n:, n:])
    assert gp.mean.shape == (3, 2) and gp.cov.shape == (3, 3)
    torch.testing.assert_close(readout.mean, gp.mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(readout.cov, gp.cov, rtol=1e-9, atol=1e-12)
    assert nk.gp_inference(S[:n, :n], y, S[n:, :n]).cov is None
    assert nk.ntk_ensemble(k.ntk[:n, :n], S[:n, :n], y, k.ntk[n:, :n], S[n:, :n]).cov is None
    # diag_reg is absolute: (K + r I)^-1.
    reg = nk.gp_inference(S[:n, :n], y, S[n:, :n], diag_reg=0.3).mean
    torch.testing.assert_close(reg, S[n:, :n] @ torch.linalg.solve(S[:n, :n] + 0.3 * torch.eye(n, dtype=F64), y))


# --- neural-tangents ---------------------------------------------------------------------------

REFERENCE = json.loads((Path(__file__).parent / "data" / "neural_tangents_predict_reference.json").read_text())


def close(ours, reference):
    reference = torch.as_tensor(reference, dtype=F64)
    torch.testing.assert_close(ours.cpu().reshape(reference.shape), reference, rtol=1e-10, atol=1e-10 * float(reference.abs().max()))


@pytest.mark.parametrize("case", REFERENCE["cases"], ids=lambda c: f"{c['kind']}-k{len(c['y_train'][0])}")
def test_matches_neural_tangents(case, device):
    """neural-tangents 0.6.5 in float64. Its time is normalised by y_train.size = n k, ours by n:
    its learning_rate is ours times k."""
    T = lambda name: torch.tensor(case[name], dtype=F64, device=device)  # noqa: E731
    y = T("y_train")
    k = y.shape[1]
    if case["kind"] == "gradient_descent_mse":
        lr = case["learning_rate"] / k
        args = (T("k_train_train"), y, T("fx_train_0"))
        flow = nk.gradient_flow(*args, case["times"], lr, T("k_test_train"), T("fx_test_0"))
        close(flow.train, case["train_t"]), close(flow.test, case["test_t"])
        flow = nk.gradient_flow(*args, math.inf, lr, T("k_test_train"), T("fx_test_0"))
        close(flow.train, case["train_inf"]), close(flow.test, case["test_inf"])
    elif case["kind"] == "gp_inference":
        gp = nk.gp_inference(T("k_train_train"), y, T("k_test_train"), T("k_test_test"), diag_reg=case["diag_reg"])
        close(gp.mean, case["mean"]), close(gp.cov, case["cov"])
    else:
        lr = case["learning_rate"] / k
        nngp = (T("nngp_train_train"), y, T("nngp_test_train"), T("nngp_test_test"))
        ntk = (T("ntk_train_train"), T("nngp_train_train"), y, T("ntk_test_train"), T("nngp_test_train"), T("nngp_test_test"))
        for get, predict, args in (("nngp", nk.nngp_ensemble, nngp), ("ntk", nk.ntk_ensemble, ntk)):
            finite, infinite = predict(*args, t=case["times"], lr=lr), predict(*args, t=math.inf, lr=lr)
            close(finite.mean, case[get]["mean_t"]), close(finite.cov, case[get]["cov_t"])
            close(infinite.mean, case[get]["mean_inf"]), close(infinite.cov, case[get]["cov_inf"])
        # The stored kernels are nk.infinite_width_kernels' (ReLU's self-kernel diagonal only to
        # ~1e-9: see test_infinite.test_matches_neural_tangents).
        options = {key: case[key] for key in ("depth", "activation", "W_std", "b_std")}
        ours = nk.infinite_width_kernels(T("x_train"), **options)
        close_kernel = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-7, atol=0)  # noqa: E731
        close_kernel(ours.ntk, T("ntk_train_train")), close_kernel(ours.nngp, T("nngp_train_train"))
        cross = nk.infinite_width_kernels(T("x_test"), T("x_train"), **options)
        close(cross.ntk, case["ntk_test_train"]), close(cross.nngp, case["nngp_test_train"])


# --- Bad input ---------------------------------------------------------------------------------


def test_gradient_flow_errors():
    K, y = torch.eye(3, dtype=F64), torch.ones(3, dtype=F64)
    K_ZX = torch.ones(2, 3, dtype=F64)
    flow = nk.gradient_flow
    with pytest.raises(ValueError, match="times must be >= 0; got t = -1"):
        flow(K, y, None, [1.0, -1.0], 0.1)
    with pytest.raises(ValueError, match="t contains NaN"):
        flow(K, y, None, float("nan"), 0.1)
    with pytest.raises(ValueError, match=r"t must be a number or a non-empty 1-D sequence of times; got shape \(2, 1\)"):
        flow(K, y, None, [[1.0], [2.0]], 0.1)
    with pytest.raises(TypeError, match="t must be a number"):
        flow(K, y, None, "soon", 0.1)
    with pytest.raises(ValueError, match="lr must be > 0; got 0.0"):
        flow(K, y, None, 1.0, 0.0)
    with pytest.raises(ValueError, match="lr must be > 0; got -1.0"):
        flow(K, y, None, 1.0, -1.0)
    with pytest.raises(ValueError, match=r"K_train must be square \(n, n\); got shape \(3, 2\)"):
        flow(torch.ones(3, 2, dtype=F64), y, None, 1.0, 0.1)
    with pytest.raises(ValueError, match=r"K_train must be a 2-D kernel matrix; got shape \(3, 3, 2, 2\).*diagonal"):
        flow(torch.ones(3, 3, 2, 2, dtype=F64), y, None, 1.0, 0.1)
    with pytest.raises(ValueError, match="y has 4 rows but there are n=3 training points"):
        flow(K, torch.ones(4, dtype=F64), None, 1.0, 0.1)
    with pytest.raises(ValueError, match=r"K_test_train must have n=3 columns \(one per training point\); got shape \(2, 4\)"):
        flow(K, y, None, 1.0, 0.1, torch.ones(2, 4, dtype=F64))
    with pytest.raises(ValueError, match=r"f0 must have shape \(3,\) \(as y, one row per point\); got \(3, 1\)"):
        flow(K, y, torch.ones(3, 1, dtype=F64), 1.0, 0.1)
    with pytest.raises(ValueError, match=r"f0_test must have shape \(2,\)"):
        flow(K, y, None, 1.0, 0.1, K_ZX, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="f0_test was given without K_test_train"):
        flow(K, y, None, 1.0, 0.1, None, torch.ones(2, dtype=F64))
    bad = K.clone()
    bad[0, 1] = float("inf")
    with pytest.raises(ValueError, match="K_train contains 1 NaN or infinite value"):
        flow(bad, y, None, 1.0, 0.1)
    with pytest.raises(ValueError, match="y contains 1 NaN"):
        flow(K, torch.tensor([1.0, float("nan"), 0.0], dtype=F64), None, 1.0, 0.1)
    with pytest.raises(ValueError, match="K_train is not symmetric"):
        flow(torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=F64), y[:2], None, 1.0, 0.1)
    not_psd = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64)  # eigenvalues 3 and -1
    with pytest.raises(ValueError, match=r"K_train is not positive semi-definite: smallest eigenvalue -1 "):
        flow(not_psd, y[:2], None, 1.0, 0.1)
    singular = torch.ones(3, 3, dtype=F64)
    finite = flow(singular, y, None, [0.0, 5.0], 0.1, K_ZX)  # fine at finite times: the ODE's solution
    train, test = ode_solution(singular, K_ZX, y, torch.zeros(3, dtype=F64), torch.zeros(2, dtype=F64), 5.0, 0.1)
    torch.testing.assert_close(finite.train[1], train, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(finite.test[1], test, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match=r"K_train is numerically singular \(condition number .*\): the t = inf limit"):
        flow(singular, y, None, [0.0, math.inf], 0.1, K_ZX)
    with pytest.raises(TypeError, match="K_train has dtype torch.float64 but y has torch.float32"):
        flow(K, y.float(), None, 1.0, 0.1)
    with pytest.raises(TypeError, match="K_train has dtype torch.float64 but K_test_train has torch.float32"):
        flow(K, y, None, 1.0, 0.1, K_ZX.float())
    with pytest.raises(TypeError, match="K_train must be a torch.Tensor"):
        flow(K.numpy(), y, None, 1.0, 0.1)


def test_inference_errors():
    K, y, K_ZX = torch.eye(3, dtype=F64), torch.ones(3, dtype=F64), torch.ones(2, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"K_train: K \+ ridge\*I is (not positive definite|numerically singular).*\(ridge is gp_inference's diag_reg\)"):
        nk.gp_inference(torch.ones(3, 3, dtype=F64), y, K_ZX)
    fixed = nk.gp_inference(torch.ones(3, 3, dtype=F64), y, K_ZX, diag_reg=0.1)  # a ridge fixes it
    expected = K_ZX @ torch.linalg.solve(torch.ones(3, 3, dtype=F64) + 0.1 * torch.eye(3, dtype=F64), y)
    torch.testing.assert_close(fixed.mean, expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="diag_reg must be >= 0"):
        nk.gp_inference(K, y, K_ZX, diag_reg=-1.0)
    with pytest.raises(ValueError, match=r"K_test_test must have shape \(2, 2\); got \(3, 3\)"):
        nk.gp_inference(K, y, K_ZX, torch.eye(3, dtype=F64))
    with pytest.raises(ValueError, match=r"nngp_test_test must have shape \(2, 2\)"):
        nk.nngp_ensemble(K, y, K_ZX, torch.eye(3, dtype=F64), t=1.0)
    with pytest.raises(ValueError, match="nngp_train is numerically singular"):
        nk.nngp_ensemble(torch.ones(3, 3, dtype=F64), y, K_ZX)
    with pytest.raises(ValueError, match="ntk_train is not positive semi-definite"):
        nk.ntk_ensemble(-K, K, y, K_ZX, K_ZX, t=1.0)
    with pytest.raises(ValueError, match=r"nngp_train must have shape \(3, 3\); got \(2, 3\)"):
        nk.ntk_ensemble(K, K[:2], y, K_ZX, K_ZX)
    with pytest.raises(ValueError, match=r"nngp_test_train must have shape \(2, 3\); got \(2, 2\)"):
        nk.ntk_ensemble(K, K, y, K_ZX, K_ZX[:, :2])
    with pytest.raises(ValueError, match="times must be >= 0"):
        nk.ntk_ensemble(K, K, y, K_ZX, K_ZX, t=-2.0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        nk.nngp_ensemble(K, y, K_ZX, lr=0.0)


def test_train_errors():
    X, y = torch.ones(4, 2, dtype=F64), torch.ones(4, dtype=F64)
    net = nk.MLP(2, 8, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        nk.train(lambda x: x, X, y, 0.1, 1)
    with pytest.raises(ValueError, match="steps must be >= 0; got -1"):
        nk.train(net, X, y, 0.1, -1)
    with pytest.raises(ValueError, match="lr must be > 0"):
        nk.train(net, X, y, 0.0, 1)
    with pytest.raises(ValueError, match="y has 3 rows but there are n=4"):
        nk.train(net, X, y[:3], 0.1, 1)
    with pytest.raises(ValueError, match=r"model\(X\) has shape \(4, 1\), which does not match y of shape \(4, 2\)"):
        nk.train(net, X, torch.ones(4, 2, dtype=F64), 0.1, 1)
    with pytest.raises(ValueError, match="feature dimensions differ: X has d=2 columns but X_test has d=3"):
        nk.train(net, X, y, 0.1, 1, X_test=torch.ones(2, 3, dtype=F64))
    with pytest.raises(ValueError, match="record asks for step 5 but there are only steps=3"):
        nk.train(net, X, y, 0.1, 3, record=[0, 5])
    with pytest.raises(ValueError, match="record must be >= 1; got 0"):
        nk.train(net, X, y, 0.1, 3, record=0)
    with pytest.raises(ValueError, match="record is empty"):
        nk.train(net, X, y, 0.1, 3, record=[])
    with pytest.raises(TypeError, match="progress must be True, False or None"):
        nk.train(net, X, y, 0.1, 3, progress="yes")
    with pytest.raises(TypeError, match="X has dtype torch.float32 but a model parameter has torch.float64"):
        nk.train(net, X.float(), y.float(), 0.1, 1)
    with pytest.raises(ValueError, match="X contains 1 NaN"):
        nk.train(net, torch.tensor([[0.0, float("nan")]], dtype=F64), y[:1], 0.1, 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_mixed_devices():
    K, y = torch.eye(3, dtype=F64), torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="K_train is on cpu but y is on cuda"):
        nk.gradient_flow(K, y.cuda(), None, 1.0, 0.1)
    with pytest.raises(ValueError, match="K_train is on cpu but K_test_train is on cuda"):
        nk.gp_inference(K, y, torch.ones(2, 3, dtype=F64, device="cuda"))
    net = nk.MLP(3, 4, 1, dtype=F64)
    with pytest.raises(ValueError, match="X is on cuda:0 but a model parameter is on cpu"):
        nk.train(net, torch.ones(2, 3, dtype=F64, device="cuda"), torch.ones(2, dtype=F64, device="cuda"), 0.1, 1)


def test_train_takes_images():
    """A small CNN built by nk.serial trains on images: after one step its parameters are those
    of one gradient step computed by hand with autograd on the same loss."""
    import copy

    gen = torch.Generator().manual_seed(21)
    X = torch.randn(5, 1, 6, 6, generator=gen, dtype=F64)
    y = torch.randn(5, generator=gen, dtype=F64)
    net = nk.serial(nk.Conv(4, 3, padding="same", b_std=0.1), nk.Relu(), nk.GlobalAvgPool(), nk.Dense(1))
    model = net.init((1, 6, 6), generator=gen, dtype=F64)
    by_hand = copy.deepcopy(model)
    run = nk.train(model, X, y, lr=0.3, steps=1, X_test=X[:2])
    loss = 0.5 * (by_hand(X)[:, 0] - y).square().sum() / 5
    grads = torch.autograd.grad(loss, list(by_hand.parameters()))
    for p, p0, g in zip(model.parameters(), by_hand.parameters(), grads):
        torch.testing.assert_close(p, p0 - 0.3 * g, rtol=1e-13, atol=1e-15)
    assert run.train.shape == (2, 5) and run.test.shape == (2, 2) and float(run.loss[1]) < float(run.loss[0])


def test_a_diverging_run_keeps_what_it_recorded():
    """Above the stable limit the loss blows up; the error carries the records made before."""
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(8, 3, generator=gen, dtype=F64)
    y = torch.sin(X[:, 0])
    net = nk.MLP(3, 64, 1, generator=gen, dtype=F64)
    lr = 3 * nk.critical_learning_rate(nk.empirical_ntk(net, X))
    with pytest.raises(nk.TrainingDiverged, match="training diverged at step") as caught:
        nk.train(net, X, y, lr=lr, steps=2000, record=1)
    partial = caught.value.trajectory
    assert len(partial.steps) >= 2 and bool(torch.isfinite(partial.loss).all())
    assert partial.steps.tolist() == list(range(len(partial.steps))) and partial.train.shape == (len(partial.steps), 8)
    assert float(partial.loss[-1]) > 10 * float(partial.loss[0])  # it was blowing up
