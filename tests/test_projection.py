"""The layers' input projection (rnn_ext/_projection.py): oneDNN's matmul on
the CPU in fp32, F.linear everywhere else; values and gradients against an
fp64 reference."""
import pytest
import torch
import torch.nn.functional as F

from rnn_ext import _C, _projection

ops = torch.ops.rnn_ext

needs_onednn = pytest.mark.skipif(not _projection._ONEDNN, reason="PyTorch built without oneDNN")

# The rules the tests run under, whatever this machine's ISA: the small test
# shapes on oneDNN's side, the input gradient through oneDNN or through MKL,
# the weight gradient through oneDNN (rnn_ext::transposed_product) or MKL.
GRAD_ONEDNN = _projection.Rule(min_rows=256, min_in=0, min_weight=0, grad_min_rows=256)
GRAD_MKL = _projection.Rule(min_rows=256, min_in=0, min_weight=0, grad_min_rows=1 << 30)
ALL_ONEDNN = _projection.Rule(min_rows=256, min_in=0, min_weight=0, grad_min_rows=256,
                              weight_grad_min_rows=256)
# The forward as (W x^T)^T (rnn_ext::short_linear), its gradients through MKL.
SHORT = _projection.Rule(min_rows=1 << 30, min_in=0, min_weight=0, grad_min_rows=1 << 30,
                         short_min_rows=16)


@pytest.fixture(params=[GRAD_ONEDNN, GRAD_MKL, ALL_ONEDNN, SHORT],
                ids=["grad-onednn", "grad-mkl", "all-onednn", "short"])
def rule(request, monkeypatch):
    monkeypatch.setattr(_projection, "RULE", request.param)
    return request.param


def _case(bias, transposed, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    T, B = 16, 17  # T x B rows >= the tests' rules' min_rows: oneDNN's side
    x = torch.randn(T, B, 7, generator=g, dtype=dtype)
    if transposed:  # batch_first input as the modules see it: a [T, B, I] view
        x = torch.randn(B, T, 7, generator=g, dtype=dtype).transpose(0, 1)
    w = torch.randn(12, 7, generator=g, dtype=dtype)
    b = torch.randn(12, generator=g, dtype=dtype) if bias else None
    return x, w, b


@needs_onednn
def test_cpu_fp32_takes_onednn(monkeypatch):
    monkeypatch.setattr(_projection, "RULE", GRAD_ONEDNN)
    calls = []
    real = _projection._onednn_linear
    monkeypatch.setattr(_projection, "_onednn_linear", lambda *a: calls.append(1) or real(*a))
    x, w, b = _case(True, False)
    _projection.input_projection(x, w, b)
    assert calls, "the CPU fp32 projection did not go through oneDNN"
    calls.clear()
    with torch.backends.mkldnn.flags(enabled=False):
        _projection.input_projection(x, w, b)
    assert not calls, "torch.backends.mkldnn.enabled=False must be respected"
    _projection.input_projection(x.double(), w.double(), b.double())
    assert not calls, "only fp32 goes through oneDNN"
    _projection.input_projection(x[:2], w, b)
    assert 2 * x.size(1) < GRAD_ONEDNN.min_rows and not calls, \
        "a product of fewer than min_rows rows stays with MKL"
    monkeypatch.setattr(_projection, "RULE", _projection.Rule(0, 8, 0, 0))
    _projection.input_projection(x, w, b)
    assert x.size(-1) < 8 and not calls, "an input size below min_in stays with MKL"
    monkeypatch.setattr(_projection, "RULE", _projection.Rule(0, 0, w.numel() + 1, 0))
    _projection.input_projection(x, w, b)
    assert not calls, "a weight below min_weight elements stays with MKL"
    monkeypatch.setattr(_projection, "RULE", None)
    _projection.input_projection(x, w, b)
    assert not calls, "a CPU without a rule (another ISA) stays with F.linear"


@needs_onednn
def test_input_gradient_takes_the_rules_side(monkeypatch, rule):
    calls = []
    real = _projection._onednn_linear
    monkeypatch.setattr(_projection, "_onednn_linear", lambda *a: calls.append(1) or real(*a))
    products = []
    real_product = ops.transposed_product
    monkeypatch.setattr(ops, "transposed_product",
                        lambda *a: products.append(1) or real_product(*a))
    x, w, b = _case(True, False)
    x.requires_grad_()
    w.requires_grad_()
    _projection.input_projection(x, w, b).sum().backward()
    rows = x.numel() // x.size(-1)
    want = (rule is not SHORT) + (rule.grad_min_rows <= rows)  # the forward, the input gradient
    assert len(calls) == want and x.grad is not None
    assert len(products) == (rule is ALL_ONEDNN) and w.grad is not None, \
        "the weight gradient goes through oneDNN exactly when the rule says so"


@needs_onednn
@pytest.mark.parametrize("isa", ["AVX512-ZEN5", "AVX512", "AVX2"])
def test_each_isa_rule_sends_the_benchmark_shapes_where_measured(isa):
    # The rows of RULES against the shapes their measurements chose by
    # (rnn_ext/_projection.py's docstring, benchmarks/NOTES.md).
    r = _projection.RULES[isa]

    def forward(rows, I, N):
        return rows >= r.min_rows and I >= r.min_in and I * N >= r.min_weight

    def weight_grad(rows):
        return 0 <= r.weight_grad_min_rows <= rows

    if isa == "AVX512-ZEN5":  # oneDNN at twice MKL's rate: every product
        assert not forward(24, 1024, 4096) and forward(96, 512, 2048)
        assert r.onednn_below_rows <= r.short_min_rows <= 24 < 95 < r.min_rows
        assert r.grad_min_rows <= 24 and weight_grad(48) and not weight_grad(24)
        return
    assert not weight_grad(1 << 20)
    if isa == "AVX512":
        assert not forward(24, 512, 2048) and forward(384, 512, 2048)
        assert r.grad_min_rows == r.min_rows
    else:
        assert forward(24, 512, 2048) and forward(96, 1024, 4096)
        assert not forward(96, 16, 1024) and not forward(96, 256, 256)
        assert r.grad_min_rows > 384


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, True)],
                         ids=["all", "x", "weights"])
def test_values_and_gradients_match_fp64(bias, transposed, needs, rule):
    x, w, b = _case(bias, transposed)
    leaves = [x, w, b]
    for t, n in zip(leaves, needs):
        if t is not None:
            t.requires_grad_(n)
    y = _projection.input_projection(x, w, b)
    exact = [None if t is None else t.detach().double().requires_grad_(t.requires_grad)
             for t in leaves]
    y_ref = F.linear(*exact)
    torch.testing.assert_close(y.double(), y_ref, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref.backward(dy.double())
    for got, want in zip(leaves, exact):
        if got is None or not got.requires_grad:
            assert got is None or got.grad is None
            continue
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_no_grad_builds_no_graph():
    x, w, b = _case(True, False)
    w.requires_grad_()
    with torch.no_grad():
        y = _projection.input_projection(x, w, b)
    assert y.grad_fn is None and not y.requires_grad


def test_fp64_gradcheck_through_the_same_entry_point():
    x, w, b = (t[:3].requires_grad_() if t.dim() == 3 else t.requires_grad_()
               for t in _case(True, True, torch.float64))
    assert torch.autograd.gradcheck(_projection.input_projection, (x, w, b))


@pytest.mark.parametrize("capability,family,kind", [
    ("AVX512", 26, "AVX512-ZEN5"), ("AVX512", 27, "AVX512-ZEN5"), ("AVX512", 25, "AVX512"),
    ("AVX512", None, "AVX512"), ("AVX2", 26, "AVX2"), ("DEFAULT", None, "DEFAULT")])
def test_machine_kind(capability, family, kind):
    assert _projection.machine_kind(capability, family) == kind


@pytest.mark.parametrize("vendor,family,want", [("AuthenticAMD", 26, 26), ("AuthenticAMD", 25, 25),
                                                ("GenuineIntel", 6, None)])
def test_amd_family_reads_cpuinfo(tmp_path, vendor, family, want):
    cpu = f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 2\n"
    path = tmp_path / "cpuinfo"
    path.write_text(cpu + "\n" + cpu.replace(": 0", ": 1"))
    assert _projection._amd_family(str(path)) == want
    assert _projection._amd_family(str(tmp_path / "absent")) is None


def test_the_rule_sets_the_ops_weight_gradient_threshold():
    # The C++ ops' dW_hh and dW_hr follow the rule the module was imported with.
    want = _projection.RULE.weight_grad_min_rows if _projection.RULE and _projection._ONEDNN else -1
    previous = _C._set_onednn_weight_grad_rows(want)
    assert previous == want


@pytest.mark.parametrize("onednn_rows", [0, -1], ids=["onednn", "mkl"])
@pytest.mark.parametrize("shape", [(40, 24, 9), (1, 3, 2), (300, 130, 70)])
def test_transposed_product_matches_fp64(shape, onednn_rows):
    N, M, K = shape
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(N, n, generator=g) for n in (M, K))
    previous = _C._set_onednn_weight_grad_rows(onednn_rows)
    try:
        got = ops.transposed_product(a, b)
        got_view = ops.transposed_product(a.t().contiguous().t(), b)  # a non-contiguous a
    finally:
        _C._set_onednn_weight_grad_rows(previous)
    want = a.double().t() @ b.double()
    torch_error = (a.t() @ b - want).abs().max().item()  # PyTorch's own fp32 error
    assert (got.double() - want).abs().max().item() <= max(1e-6, 2 * torch_error)
    torch.testing.assert_close(got_view, got, rtol=0, atol=0)


def test_transposed_product_errors_and_opcheck():
    with pytest.raises(RuntimeError, match=r"expected a \[N, M\] and b \[N, K\]"):
        ops.transposed_product(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="same dtype"):
        ops.transposed_product(torch.randn(3, 4), torch.randn(3, 4, dtype=torch.float64))
    torch.library.opcheck(ops.transposed_product, (torch.randn(5, 3), torch.randn(5, 2)))


@needs_onednn
@pytest.mark.parametrize("grad", [True, False])
def test_short_forward_takes_short_linear(monkeypatch, grad):
    # Its values and gradients: test_values_and_gradients_match_fp64[short].
    monkeypatch.setattr(_projection, "RULE", SHORT)
    calls = []
    real = ops.short_linear
    monkeypatch.setattr(ops, "short_linear", lambda *a: calls.append(1) or real(*a))
    x, w, b = _case(True, True)
    with torch.set_grad_enabled(grad):
        _projection.input_projection(x.requires_grad_(), w, b)
    assert len(calls) == 1, "a short forward goes through rnn_ext::short_linear"


@needs_onednn
def test_routes_of_each_rule(monkeypatch):
    x, w, b = _case(True, False)  # 272 rows
    monkeypatch.setattr(_projection, "RULE", _projection.RULES["AVX512-ZEN5"])
    short = _projection._short
    assert _projection._route(x, w, b) == "onednn" and not short(272)
    assert _projection._route(x[:2], w, b) == "onednn" and short(34)
    assert _projection._route(x[:1, :2], w, b) == "onednn" and not short(2)
    assert _projection._route(x.double(), w.double(), b.double()) == "linear"
    monkeypatch.setattr(_projection, "RULE", _projection.RULES["AVX512"])
    assert _projection._route(x[:2, :3], w, b) == "linear"
    assert _projection._route(x, w, b) == "onednn" and not short(272)


@pytest.mark.parametrize("shape", [(5, 7, 3), (1, 4, 2), (24, 300, 70)])
@pytest.mark.parametrize("bias", [True, False])
def test_short_linear_matches_fp64(shape, bias):
    N, M, K = shape
    g = torch.Generator().manual_seed(2)
    x, w = torch.randn(N, K, generator=g), torch.randn(M, K, generator=g)
    b = torch.randn(M, generator=g) if bias else None
    want = F.linear(x.double(), w.double(), None if b is None else b.double())
    torch_error = (F.linear(x, w, b) - want).abs().max().item()
    for xs, ws in ((x, w), (x.t().contiguous().t(), w.t().contiguous().t())):  # non-contiguous too
        got = ops.short_linear(xs, ws, b)
        assert got.shape == (N, M) and got.is_contiguous()
        assert (got.double() - want).abs().max().item() <= max(1e-6, 2 * torch_error)
    with torch.backends.mkldnn.flags(enabled=False):  # at::linear then
        torch.testing.assert_close(ops.short_linear(x, w, b), F.linear(x, w, b))
    torch.testing.assert_close(ops.short_linear(x.double(), w.double(), None), want if b is None
                               else want - b.double(), rtol=1e-12, atol=1e-12)


def test_short_linear_errors_and_opcheck():
    with pytest.raises(RuntimeError, match=r"expected x \[N, K\] and w \[M, K\]"):
        ops.short_linear(torch.randn(3, 4), torch.randn(2, 5), None)
    with pytest.raises(RuntimeError, match=r"expected b of shape \[2\]"):
        ops.short_linear(torch.randn(3, 4), torch.randn(2, 4), torch.randn(3))
    with pytest.raises(RuntimeError, match="same dtype"):
        ops.short_linear(torch.randn(3, 4), torch.randn(2, 4, dtype=torch.float64), None)
    torch.library.opcheck(ops.short_linear, (torch.randn(5, 3), torch.randn(4, 3), torch.randn(4)))


def test_rule_sets_the_single_row_panel_limit():
    mib = _projection.RULE.single_row_panel_mib if _projection.RULE else 8
    previous = _C._set_single_row_panel_bytes(mib << 20)
    assert previous == mib << 20
