"Checks of the one-pass accumulators (salmon.stats) and their readers on synthetic activations (no model needed)"
import math
import numpy as np
import pytest
import torch
from salmon.stats import _TopK, _window_max, _windows, LatentStats
from salmon.cards import nearest_latents
from salmon.specificity import specificity_scores
from salmon.autointerp import parse_indices, parse_score
from salmon.sae import JumpReLUSAE


def _stream(n_texts=12, F=7, seed=0):
    "Sparse non-negative activations for texts of random lengths; returns f [N, F] and text ids [N]"
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3, 40, (n_texts,), generator=g)
    seg = torch.repeat_interleave(torch.arange(n_texts), lens)
    f = torch.rand(len(seg), F, generator=g) * (torch.rand(len(seg), F, generator=g) < 0.3)
    return f, seg


@pytest.mark.parametrize('texts_per_batch', [1, 3, 12])
def test_topk_merge_matches_brute_force(texts_per_batch):
    f, seg = _stream()
    k, left, right = 5, 4, 2
    acc = _TopK(k, f.shape[1], left + 1 + right, 'cpu')
    r0 = 0
    for b in range(0, int(seg.max()) + 1, texts_per_batch):
        m = (seg >= b) & (seg < b + texts_per_batch)
        fb, sb = f[m], seg[m]
        acc.update(torch.where(fb > 0, fb, -1.0), fb, sb, r0, left, right)
        r0 += len(fb)
    top = f.topk(k, dim=0)
    torch.testing.assert_close(acc.act, top.values * (top.values > 0))
    torch.testing.assert_close(f[acc.row.clamp(min=0), torch.arange(f.shape[1])] * (acc.row >= 0), acc.act)
    # every stored window equals a brute-force window over the whole stream (windows never cross texts)
    s, j = (acc.row >= 0).nonzero(as_tuple=True)
    want = _windows(f, seg, acc.row[s, j], j, left, right)
    torch.testing.assert_close(acc.ctx[s, j], want, equal_nan=True)
    for r, lat, w in zip(acc.row[s, j].tolist(), j.tolist(), acc.ctx[s, j]):   # and by hand
        for o in range(-left, right + 1):
            inside = 0 <= r + o < len(f) and seg[r + o] == seg[r]
            assert (w[o + left] == f[r + o, lat]) if inside else torch.isnan(w[o + left])


def test_uniform_sample_is_uniform():
    "Top-s of random keys among firings: each firing row is kept with probability s/m"
    f = torch.zeros(40, 1); f[::2] = 1.0          # 20 firing rows
    seg = torch.zeros(40, dtype=torch.long)
    s, hits, n_rep = 5, torch.zeros(40), 400
    for rep in range(n_rep):
        g = torch.Generator().manual_seed(rep)
        acc = _TopK(s, 1, 1, 'cpu')
        for half in (slice(0, 20), slice(20, 40)):
            fb = f[half]
            acc.update(torch.where(fb > 0, torch.rand(fb.shape, generator=g), -1.0), fb, seg[half], half.start, 0, 0)
        hits[acc.row[:, 0]] += 1
    assert hits[1::2].sum() == 0                  # never a silent row
    p = hits[::2] / n_rep                          # expected 5/20 = 0.25 each, sd ≈ 0.022
    assert (p - 0.25).abs().max() < 0.1, p


def test_window_max_chunked_matches_direct():
    f, seg = _stream(F=300)
    rows = torch.arange(0, len(f), 3)
    got = _window_max(f, seg, rows, 30, 5)
    for r in rows[:20].tolist():
        lo, hi = max(r - 30, 0), min(r + 6, len(f))
        w = torch.arange(lo, hi); w = w[seg[w] == seg[r]]
        torch.testing.assert_close(got[rows.tolist().index(r)], f[w].amax(0))


def test_nearest_latents_chunk_invariant():
    a, b = JumpReLUSAE(16, 50), JumpReLUSAE(16, 70)
    c1, i1 = nearest_latents(a, b, k=4, chunk=7)
    c2, i2 = nearest_latents(a, b, k=4, chunk=1000)
    torch.testing.assert_close(c1, c2); assert torch.equal(i1, i2)
    with pytest.raises(ValueError, match='different widths'): nearest_latents(a, JumpReLUSAE(8, 4))


def test_parsers():
    assert parse_indices('1,2, 3 and 99', 5) == {1, 2, 3}
    assert parse_indices('', 5) == set()
    assert parse_score('-3') == 3.0 and math.isnan(parse_score(''))


def test_specificity_is_size_invariant():
    "Doubling one corpus (same per-token mass) leaves specificity unchanged"
    def st(n, act):
        z = torch.zeros(0)
        return LatentStats('x', [], torch.zeros(n, 3, dtype=torch.long), (torch.tensor(act) > 0).long(), torch.tensor(act, dtype=torch.float64),
                           torch.zeros(len(act), dtype=torch.float64), torch.zeros(1, dtype=torch.bool), {}, {}, z, z, z, z, 30, 5, None, 0.0)
    a = specificity_scores(st(100, [3., 1.]), st(50, [1., 1.]))
    b = specificity_scores(st(100, [3., 1.]), st(100, [2., 2.]))
    np.testing.assert_allclose(a.specificity, b.specificity)
    np.testing.assert_allclose(a.specificity, [0.6, 1 / 3])
