"""Set embeddings: exact masking, permutation invariance and the groups of EGNN and LorentzNet.

Everything runs in float64 on small seeded random sets of sizes 5, 3, 1, 0 and 7 (an empty set
and a singleton included), so a symmetry that holds must hold to ~1e-12: the tolerances below
leave room for the order of floating-point sums only.  Masking is tested by moving the padding
around, adding more of it and filling it with junk (huge numbers, inf, NaN), and by checking
that the gradient into padded slots is exactly zero.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

from simfer.errors import ShapeError
from simfer.nn.sets import (
    EGNN,
    DeepSets,
    LorentzNet,
    count_parameters,
    masked_pool,
    minkowski,
    pad_sets,
    set_sizes,
)

SIZES = [5, 3, 1, 0, 7]
IN, OUT = 6, 3  # EGNN: 3 coordinates + 3 scalars; LorentzNet: a 4-momentum + 2 scalars
DOCS = Path(__file__).resolve().parent.parent / "docs" / "embeddings.md"
F64 = torch.float64

MODELS = ["deepsets", "egnn-padded", "egnn-edge_list", "lorentz-padded", "lorentz-edge_list"]


def make_model(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    kind, _, edges = name.partition("-")
    if kind == "deepsets":
        return DeepSets(IN, OUT, hidden=16, **options).double()
    if kind == "egnn":
        options.setdefault("coord_dim", 3)
        return EGNN(IN, OUT, hidden=16, n_layers=3, edges=edges, **options).double()
    # a large c so that the 4-vector updates matter for the equivariance tests
    options.setdefault("coord_weight", 0.5)
    return LorentzNet(IN, OUT, hidden=16, n_layers=3, edges=edges, **options).double()


def make_sets(sizes=SIZES, seed: int = 1, features: int = IN) -> list[torch.Tensor]:
    """Per-event sets: physical 4-momenta (masses 0.1–2, |p| ~ 3) then random scalars."""
    gen = torch.Generator().manual_seed(seed)
    sets = []
    for n in sizes:
        p = 3 * torch.randn(n, 3, generator=gen, dtype=F64)
        mass = 0.1 + 1.9 * torch.rand(n, 1, generator=gen, dtype=F64)
        energy = (p.square().sum(-1, keepdim=True) + mass**2).sqrt()
        scalars = torch.randn(n, features - 4, generator=gen, dtype=F64)
        sets.append(torch.cat([energy, p, scalars], -1))
    return sets


def make_batch(sizes=SIZES, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_sets(make_sets(sizes, seed))


def random_orthogonal(gen: torch.Generator, reflect: bool) -> torch.Tensor:
    """A random 3×3 rotation (det +1) or rotation-reflection (det −1)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=F64))
    q = q * torch.sign(torch.diagonal(r))
    if (torch.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


def random_lorentz(gen: torch.Generator, rapidity: float, reflect: bool) -> torch.Tensor:
    """A boost of the given rapidity along a random axis after a random O(3) transformation."""
    axis = torch.randn(3, generator=gen, dtype=F64)
    axis = axis / axis.norm()
    boost = torch.eye(4, dtype=F64)
    boost[0, 0] = math.cosh(rapidity)
    boost[0, 1:] = boost[1:, 0] = math.sinh(rapidity) * axis
    boost[1:, 1:] += (math.cosh(rapidity) - 1) * torch.outer(axis, axis)
    rotation = torch.eye(4, dtype=F64)
    rotation[1:, 1:] = random_orthogonal(gen, reflect)
    transform = boost @ rotation
    metric = torch.diag(torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=F64))
    assert torch.allclose(transform.T @ metric @ transform, metric, atol=1e-12 * boost[0, 0] ** 2)
    return transform


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-10) -> bool:
    return torch.allclose(a, b, rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------
# ragged sets


def test_pad_sets_gets_ragged_sizes_right():
    """True sizes [4, 2, 1] with 3 features, zeros inside the sets (sbi's NaN padding: [4,4,2])."""
    sets = [torch.randn(4, 3, dtype=F64), torch.zeros(2, 3, dtype=F64), torch.randn(1, 3)]
    sets[0][3] = 0.0  # a real all-zero element at the end of a set
    sets[2] = sets[2].double()
    x, mask = pad_sets(sets)
    assert x.shape == (3, 4, 3) and mask.dtype == torch.bool
    assert set_sizes(mask).tolist() == [4, 2, 1]
    for b, s in enumerate(sets):
        assert torch.equal(x[b, : len(s)], s)
        assert torch.equal(x[b, len(s) :], torch.zeros(4 - len(s), 3, dtype=F64))
    x, mask = pad_sets(sets, max_n=6, padding_value=float("nan"))
    assert x.shape == (3, 6, 3) and set_sizes(mask).tolist() == [4, 2, 1]
    assert torch.isnan(x[~mask]).all() and not torch.isnan(x[mask]).any()
    x, mask = pad_sets([torch.zeros(0, 2), torch.zeros(0, 2)])
    assert x.shape == (2, 0, 2) and set_sizes(mask).tolist() == [0, 0]


def test_pad_sets_rejects_bad_sets():
    with pytest.raises(ShapeError, match="max_n"):
        pad_sets([torch.randn(4, 3)], max_n=3)
    with pytest.raises(ShapeError, match="features"):
        pad_sets([torch.randn(4, 3), torch.randn(2, 2)])
    with pytest.raises(ShapeError, match="2-D"):
        pad_sets([torch.randn(4)])
    with pytest.raises(ShapeError):
        pad_sets([])
    with pytest.raises(ShapeError, match="bool"):
        set_sizes(torch.ones(2, 3))


def test_embeddings_reject_bad_input():
    model = make_model("egnn-padded")
    x, mask = make_batch()
    with pytest.raises(ShapeError, match="shape"):
        model(x[..., :5], mask)
    with pytest.raises(ShapeError, match="bool"):
        model(x, mask.double())
    with pytest.raises(ShapeError, match="mask has shape"):
        model(x, mask[:, :-1])
    with pytest.raises(ValueError, match="pooling"):
        DeepSets(IN, OUT, pooling="max")
    with pytest.raises(ValueError, match="edges"):
        EGNN(IN, OUT, edges="sparse")(x, mask)
    with pytest.raises(ShapeError, match="in_features"):
        LorentzNet(3, OUT)


# ---------------------------------------------------------------------------------------------
# masking and permutations, for every embedding


@pytest.mark.parametrize("name", MODELS)
def test_invariant_under_permutations_of_the_slots(name):
    """Shuffling each set's slots, real elements and padding alike, changes nothing."""
    model = make_model(name)
    x, mask = make_batch()
    gen = torch.Generator().manual_seed(2)
    order = torch.stack([torch.randperm(x.shape[1], generator=gen) for _ in range(x.shape[0])])
    rows = torch.arange(x.shape[0])[:, None]
    assert not torch.equal(order, torch.arange(x.shape[1]).expand_as(order))
    assert close(model(x[rows, order], mask[rows, order]), model(x, mask))


@pytest.mark.parametrize("junk", [1e30, -7.0, math.inf, math.nan])
@pytest.mark.parametrize("name", MODELS)
def test_padding_and_its_values_change_nothing(name, junk):
    """Four more padded slots, filled with junk, leave the summary as it is."""
    model = make_model(name)
    x, mask = make_batch()
    reference = model(x, mask)
    x_padded, mask_padded = pad_sets(make_sets(), max_n=x.shape[1] + 4, padding_value=junk)
    out = model(x_padded, mask_padded)
    assert torch.isfinite(out).all()
    assert close(out, reference)


@pytest.mark.parametrize("name", MODELS)
def test_no_gradient_reaches_the_padding(name):
    """d(output)/d(padded slots) is exactly zero, even with NaN there; parameter gradients are
    the same as with clean padding."""
    model = make_model(name)
    grads = []
    for junk in [0.0, math.nan]:
        x, mask = pad_sets(make_sets(), max_n=9, padding_value=junk)
        x.requires_grad_(True)
        model.zero_grad()
        model(x, mask).square().sum().backward()
        assert torch.equal(x.grad[~mask], torch.zeros_like(x.grad[~mask]))
        assert torch.isfinite(x.grad).all() and x.grad[mask].abs().sum() > 0
        # (the last layer's φ_x has no gradient: its coordinates do not reach the summary)
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for clean, dirty in zip(*grads, strict=True):
        assert torch.isfinite(dirty).all()
        assert close(clean, dirty)


@pytest.mark.parametrize("name", MODELS)
def test_empty_sets_give_a_finite_summary(name):
    """An empty set summarises to ρ(0): finite, the same in any batch and for any padding."""
    model = make_model(name)
    x, mask = make_batch()
    out = model(x, mask)
    empty = SIZES.index(0)
    assert torch.isfinite(out).all()
    only_empty = model(*pad_sets([torch.zeros(0, IN, dtype=F64)] * 2))  # max_n = 0
    x_junk, mask_empty = pad_sets([torch.zeros(0, IN, dtype=F64)] * 2, max_n=3, padding_value=9.0)
    assert close(only_empty, out[empty].expand(2, -1))
    assert close(model(x_junk, mask_empty), only_empty)


@pytest.mark.parametrize("kind", ["egnn", "lorentz"])
def test_padded_and_edge_list_layouts_agree(kind):
    """Both edge layouts, and the automatic choice, give the same summaries and node outputs."""
    x, mask = make_batch([2, 9, 1, 0, 3, 3])
    model = make_model(f"{kind}-padded")
    reference = model(x, mask)
    h_ref, v_ref = model.message_passing(x, mask)
    for edges in ["edge_list", "auto"]:
        model.edges = edges
        assert close(model(x, mask), reference)
        h, v = model.message_passing(x, mask)
        assert close(h, h_ref) and close(v, v_ref)
        assert torch.equal(h[~mask], torch.zeros_like(h[~mask]))


def test_mask_none_means_full_sets():
    x, mask = make_batch([4, 4, 4])
    for name in MODELS:
        model = make_model(name)
        assert torch.equal(model(x), model(x, mask))


# ---------------------------------------------------------------------------------------------
# Deep Sets pooling


def test_masked_pool_uses_true_sizes():
    x, mask = pad_sets(make_sets([4, 2, 1, 0]), max_n=6, padding_value=1e6)
    h = x[..., :3]
    manual_sum = torch.stack([h[b, mask[b]].sum(0) for b in range(4)])
    sizes = torch.tensor([4.0, 2.0, 1.0, 1.0], dtype=F64)[:, None]
    assert close(masked_pool(h, mask, "sum"), manual_sum)
    assert close(masked_pool(h, mask, "mean"), manual_sum / sizes)
    assert close(masked_pool(h, mask, "mean+sum"), torch.cat([manual_sum / sizes, manual_sum], -1))
    assert torch.equal(masked_pool(h, mask, "mean")[3], torch.zeros(3, dtype=F64))


@pytest.mark.parametrize("pooling", ["mean", "sum", "mean+sum"])
def test_deepsets_batched_equals_one_set_at_a_time(pooling):
    """The padded batch gives what each set gives alone, unpadded: ρ(pool_{i ≤ n} φ(x_i))."""
    model = make_model("deepsets", pooling=pooling)
    sets = make_sets()
    x, mask = pad_sets(sets, max_n=10)
    alone = torch.cat([model(s[None]) for s in sets])
    assert close(model(x, mask), alone)
    # duplicating every element keeps the mean and doubles the sum
    doubled = pad_sets([torch.cat([s, s]) for s in sets])
    pooled, pooled_doubled = (
        masked_pool(model.phi(v), m, pooling) for v, m in [(x, mask), doubled]
    )
    hidden = model.phi[0].out_features
    if pooling != "sum":
        assert close(pooled_doubled[:, :hidden], pooled[:, :hidden])
    if pooling != "mean":
        assert close(pooled_doubled[:, -hidden:], 2 * pooled[:, -hidden:])


# ---------------------------------------------------------------------------------------------
# EGNN: E(3)


@pytest.mark.parametrize("edges", ["padded", "edge_list"])
@pytest.mark.parametrize("reflect", [False, True])
@pytest.mark.parametrize("coord_dim", [3, IN])  # with scalars; positions only
def test_egnn_is_e3_invariant_and_equivariant(coord_dim, reflect, edges):
    model = make_model(f"egnn-{edges}", coord_dim=coord_dim)
    gen = torch.Generator().manual_seed(3)
    x, mask = make_batch()
    x[..., :3] = torch.randn(*x.shape[:2], 3, generator=gen, dtype=F64)
    q = random_orthogonal(gen, reflect)
    shift = 5 * torch.randn(3, generator=gen, dtype=F64)
    moved = x.clone()
    moved[..., :3] = x[..., :3] @ q.T + shift  # padded slots move too: they must not matter
    assert close(model(moved, mask), model(x, mask))
    h, coords = model.message_passing(x, mask)
    h_moved, coords_moved = model.message_passing(moved, mask)
    assert close(h_moved, h)
    expected = torch.where(mask[..., None], coords[..., :3] @ q.T + shift, 0)
    assert close(coords_moved[..., :3], expected)
    assert not close(coords[..., :3], torch.where(mask[..., None], x[..., :3], 0), 1e-3)


# ---------------------------------------------------------------------------------------------
# LorentzNet: O(1,3)


@pytest.mark.parametrize("edges", ["padded", "edge_list"])
@pytest.mark.parametrize(("rapidity", "reflect"), [(0.4, False), (1.7, True), (3.0, False)])
def test_lorentznet_is_lorentz_invariant_and_equivariant(rapidity, reflect, edges):
    model = make_model(f"lorentz-{edges}")
    transform = random_lorentz(torch.Generator().manual_seed(4), rapidity, reflect)
    x, mask = make_batch()
    boosted = x.clone()
    boosted[..., :4] = x[..., :4] @ transform.T
    assert close(model(boosted, mask), model(x, mask))
    h, p = model.message_passing(x, mask)
    h_boosted, p_boosted = model.message_passing(boosted, mask)
    assert close(h_boosted, h)
    assert close(p_boosted, p @ transform.T, 1e-9)
    assert not close(p, torch.where(mask[..., None], x[..., :4], 0), 1e-3)
    # the masses of the updated 4-vectors are invariants too
    assert close(minkowski(p_boosted, p_boosted), minkowski(p, p), 1e-9)


def boost_robustness(rapidity: float, invariant_dtype, input_dtype) -> float:
    """max |f(Λx) − f(x)| / max |f(x)| of a float32 LorentzNet, Λ a boost of this rapidity."""
    torch.manual_seed(0)
    model = LorentzNet(IN, OUT, hidden=32, n_layers=3, invariant_dtype=invariant_dtype)
    x, mask = make_batch([12, 7, 20, 3], seed=5)
    boosted = x.clone()
    boosted[..., :4] = (
        x[..., :4] @ random_lorentz(torch.Generator().manual_seed(6), rapidity, False).T
    )
    with torch.no_grad():
        reference = model(x.to(input_dtype), mask)
        out = model(boosted.to(input_dtype), mask)
    return float((out - reference).abs().max() / reference.abs().max())


def test_float32_lorentznet_under_large_boosts():
    """Measured, printed with -s; asserted only where the float64 invariants must hold."""
    print("\nfloat32 LorentzNet, relative change of the summary under a boost")
    print("rapidity | f64 invariants, f64 input | f64 invariants, f32 input | naive (all f32)")
    for rapidity in [3.0, 5.0, 8.0]:
        good = boost_robustness(rapidity, F64, F64)
        f32_input = boost_robustness(rapidity, F64, torch.float32)
        naive = boost_robustness(rapidity, None, torch.float32)
        print(f"{rapidity:8.0f} | {good:25.1e} | {f32_input:25.1e} | {naive:.1e}")
        assert good < 1e-5
    assert boost_robustness(8.0, None, torch.float32) > 1e-2  # the naive scheme does break


# ---------------------------------------------------------------------------------------------
# sizes and the documentation


def test_count_parameters():
    assert count_parameters(torch.nn.Linear(3, 2)) == 8
    frozen = torch.nn.Linear(3, 2).requires_grad_(False)
    assert count_parameters(frozen) == 0 and count_parameters(frozen, trainable_only=False) == 8
    counts = {
        type(m).__name__: count_parameters(m)
        for m in [DeepSets(IN, OUT), EGNN(IN, OUT), LorentzNet(IN, OUT)]
    }
    print("\nparameters at the defaults (hidden=64):", counts)
    assert all(c > 0 for c in counts.values())


def test_docs_example_runs():
    """Every python block of docs/embeddings.md runs (and asserts what it claims)."""
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {})
