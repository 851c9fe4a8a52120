"""Differentiable Representation Topology Divergence (RTD).

RTD (Barannikov et al., 2022, "Representation Topology Divergence: a method for comparing
neural network representations") is the total length of the H1 bars of the
R-Cross-Barcode of two distance matrices on the same points. The thesis's SSE-RTD adds
alpha * RTD(f_w^e(x), f_{w_1}^e(x)) to the loss of members 2..K (its section 4, "SSE-RTD
algorithm") and, per its section 2, differentiates it as Trofimov et al. (2023, "Learning
topology-preserving data representations") do: the persistence pairs are found without gradients
and each bar's length is read back from the differentiable matrix at the two edges that
created and killed it, so the gradient reaches exactly those distances.
"""

from __future__ import annotations

import numpy as np
import torch
from gph import ripser_parallel


def _r_cross_matrix(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    # Vertices A (rows 0..n-1) and A' (rows n..2n-1): A is one point at time 0, A–A' edges
    # carry w = dx (so A_i–A'_i is 0), A'–A' edges carry min(w, w~). The paper writes the
    # cross block as w_+ (w with its lower triangle set to +inf); the full w used by the
    # reference code (IlyaTrofimov/RTD, calc_embed_dist) has the same barcode, needs no
    # infinite entries and keeps the matrix symmetric.
    zero = torch.zeros_like(dx)
    return torch.cat([torch.cat([zero, dx.T], 1), torch.cat([dx, torch.minimum(dx, dy)], 1)], 0)


def rtd_from_distances(dx: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    """Sum of finite H1 bar lengths of the R-Cross-Barcode of symmetric distance matrices dx, dy."""
    if dx.shape != dy.shape or dx.ndim != 2 or dx.shape[0] != dx.shape[1]:
        raise ValueError(f"need two n×n distance matrices, got {tuple(dx.shape)} and {tuple(dy.shape)}")
    m = _r_cross_matrix(dx, dy)
    res = ripser_parallel(m.detach().cpu().numpy().astype(np.float64), metric="precomputed",
                          maxdim=1, return_generators=True, n_threads=1)
    # Rows (i, j, k, l): the edge i–j gives birth to the class, the edge k–l's triangle kills it.
    # Infinite H1 bars (gens[3]) are skipped: with finite distances the complex ends as a full
    # simplex, so every H1 class dies and none can occur. giotto-ph pairs float32-rounded
    # values; exact ties (the construction repeats dx) leave the barcode unchanged, and only
    # distances that differ below float32 resolution could be paired in another order.
    gens = torch.as_tensor(res["gens"][1][0], dtype=torch.long, device=m.device).reshape(-1, 4)
    return (m[gens[:, 2], gens[:, 3]] - m[gens[:, 0], gens[:, 1]]).sum()


def _normalised_distances(z: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(z, z)
    # The thesis does not state a normalisation; this is the RTD reference code's default
    # (calc_embed_dist, norm="quantile": divide by the 0.9 quantile of the full n×n matrix),
    # which makes RTD independent of each representation's scale. The clamp only guards
    # against a batch of identical points.
    return d / torch.quantile(d.flatten(), 0.9).clamp_min(torch.finfo(d.dtype).tiny)


def rtd(x: torch.Tensor, y: torch.Tensor, subsample: int | None = 64,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Symmetrised RTD of features x (n×d1) and y (n×d2) of the same samples, on ≤ `subsample` rows."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need n×d1 and n×d2 features, got {tuple(x.shape)} and {tuple(y.shape)}")
    n = x.shape[0]
    if subsample is not None and n > subsample:
        # Persistent homology of the 2n-vertex complex grows like n^3, so large batches are
        # cut to a random subset, as the reference rtd() does; the rows are
        # torch.randperm(n, generator=generator)[:subsample].
        device = generator.device if generator is not None else "cpu"
        idx = torch.randperm(n, generator=generator, device=device)[:subsample].to(x.device)
        x, y = x[idx], y[idx]
    dx, dy = _normalised_distances(x), _normalised_distances(y)
    # R-Cross-Barcode(dx, dy) and (dy, dx) differ; RTD is their mean, as in the paper.
    return (rtd_from_distances(dx, dy) + rtd_from_distances(dy, dx)) / 2
