"""RTD: the R-Cross-Barcode against a brute-force persistence computation, and its gradients."""

import math
from itertools import combinations

import pytest
import torch

from enstune.regularizers.rtd import rtd, rtd_from_distances


def cloud(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def brute_force_h1_bars(dx: torch.Tensor, dy: torch.Tensor,
                        paper_form: bool = False) -> list[tuple[float, float]]:
    """Finite H1 bars of the Rips filtration of [[0, w^T], [w, min(dx, dy)]], w = dx, by reduction over Z/2.

    paper_form: w is dx with its lower triangle set to +inf (edges that never enter), as the
    RTD paper writes the R-Cross matrix.
    """
    n = dx.shape[0]
    cross = dx.clone()
    if paper_form:
        i, j = torch.tril_indices(n, n, -1)
        cross[i, j] = math.inf
    w = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
    w[n:, :n], w[:n, n:], w[n:, n:] = cross, cross.T, torch.minimum(dx, dy)
    w = w.tolist()
    edges = sorted((e for e in combinations(range(2 * n), 2) if w[e[0]][e[1]] < math.inf),
                   key=lambda e: w[e[0]][e[1]])
    row = {e: r for r, e in enumerate(edges)}  # edges in filtration order: a higher row is a later edge
    triangles = [t for t in combinations(range(2 * n), 3) if all(f in row for f in combinations(t, 2))]
    triangles.sort(key=lambda t: max(row[f] for f in combinations(t, 2)))
    pivot_owner: dict[int, int] = {}  # lowest (latest) edge of a reduced column -> that column
    bars = []
    for t in triangles:
        col = 0
        for f in combinations(t, 2):
            col ^= 1 << row[f]
        while col and (col.bit_length() - 1) in pivot_owner:
            col ^= pivot_owner[col.bit_length() - 1]
        if col:
            low = col.bit_length() - 1
            pivot_owner[low] = col
            a, b = edges[low]
            bars.append((w[a][b], max(w[p][q] for p, q in combinations(t, 2))))
    return bars


def total(bars: list[tuple[float, float]]) -> float:
    return sum(death - birth for birth, death in bars)


def dists(z: torch.Tensor) -> torch.Tensor:
    return torch.cdist(z, z)


@pytest.mark.parametrize("n, d1, d2, seed", [(6, 2, 3, 0), (8, 3, 3, 1), (10, 5, 2, 2), (12, 4, 8, 3)])
def test_matches_brute_force_persistence(n, d1, d2, seed):
    dx, dy = dists(cloud(n, d1, seed)), dists(cloud(n, d2, seed + 100))
    for a, b in [(dx, dy), (dy, dx)]:
        expected = total(brute_force_h1_bars(a, b))
        assert expected > 0
        assert rtd_from_distances(a, b).item() == pytest.approx(expected, abs=1e-9)


def test_paper_block_form_has_the_same_barcode():
    # The paper's cross block w_+ (lower triangle +inf) against the full w that rtd.py uses.
    dx, dy = dists(cloud(9, 3, 20)), dists(cloud(9, 4, 21))
    full = sorted((b, d) for b, d in brute_force_h1_bars(dx, dy) if d > b)
    paper = sorted((b, d) for b, d in brute_force_h1_bars(dx, dy, paper_form=True) if d > b)
    assert len(full) > 0 and len(full) == len(paper)
    assert all(f == pytest.approx(p, abs=1e-12) for f, p in zip(full, paper))


def test_zero_for_identical_and_positive_for_different_representations():
    x, y = cloud(20, 5, 0), cloud(20, 5, 1)
    assert rtd_from_distances(dists(x), dists(x)).item() == 0.0
    assert rtd(x, x).item() == 0.0
    # Same geometry up to rotation, scale and shift: the normalised distances coincide.
    q, _ = torch.linalg.qr(cloud(5, 5, 2))
    assert rtd(x, 3 * x @ q + 1).item() == pytest.approx(0.0, abs=1e-9)
    assert rtd(x, y).item() > 0.1


def test_permuting_points_in_both_matrices_keeps_the_value():
    dx, dy = dists(cloud(12, 3, 4)), dists(cloud(12, 6, 5))
    p = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    assert rtd_from_distances(dx[p][:, p], dy[p][:, p]).item() == pytest.approx(
        rtd_from_distances(dx, dy).item(), abs=1e-9)


def test_symmetrised_rtd_is_symmetric():
    x, y = cloud(16, 4, 6), cloud(16, 9, 7)
    one_way, other_way = rtd_from_distances(dists(x), dists(y)), rtd_from_distances(dists(y), dists(x))
    assert one_way.item() != pytest.approx(other_way.item())  # each direction alone is not
    assert rtd(x, y).item() == pytest.approx(rtd(y, x).item(), abs=1e-12)


def symmetric(u: torch.Tensor, n: int) -> torch.Tensor:
    i, j = torch.triu_indices(n, n, 1)
    m = torch.zeros(n, n, dtype=u.dtype).index_put((i, j), u)
    return m + m.T


def test_gradcheck_on_distances():
    n = 6
    ux = torch.pdist(cloud(n, 2, 8)).requires_grad_()
    uy = torch.pdist(cloud(n, 3, 9)).requires_grad_()
    assert rtd_from_distances(symmetric(ux, n), symmetric(uy, n)).item() > 0
    assert torch.autograd.gradcheck(
        lambda a, b: rtd_from_distances(symmetric(a, n), symmetric(b, n)), (ux, uy), eps=1e-7, atol=1e-6)


def test_gradcheck_on_features():
    x, y = cloud(6, 3, 10).requires_grad_(), cloud(6, 2, 11).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rtd(a, b, subsample=None), (x, y), eps=1e-7, atol=1e-6)


def test_gradient_reaches_both_representations():
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(12), requires_grad=True)
    y = torch.randn(32, 8, generator=torch.Generator().manual_seed(13), requires_grad=True)
    rtd(x, y).backward()
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0
    assert torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()


def test_subsample_uses_only_the_drawn_rows():
    x, y = cloud(300, 6, 14).requires_grad_(), cloud(300, 4, 15).requires_grad_()
    value = rtd(x, y, subsample=24, generator=torch.Generator().manual_seed(5))
    idx = torch.randperm(300, generator=torch.Generator().manual_seed(5))[:24]
    assert value.item() == pytest.approx(rtd(x[idx], y[idx], subsample=None).item(), abs=1e-12)
    value.backward()
    touched = (x.grad.abs().sum(1) > 0) | (y.grad.abs().sum(1) > 0)
    assert touched.sum() > 0 and set(touched.nonzero().flatten().tolist()) <= set(idx.tolist())


def test_no_subsampling_when_the_batch_is_small_enough():
    x, y = cloud(20, 3, 16), cloud(20, 5, 17)
    assert rtd(x, y, subsample=20).item() == rtd(x, y, subsample=None).item()


def test_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        rtd(cloud(5, 2, 0), cloud(6, 2, 1))
    with pytest.raises(ValueError):
        rtd_from_distances(torch.zeros(4, 4), torch.zeros(5, 5))
