"Checks of salmon.absorption: SAEBench formulas by hand, k-sparse probing, probes, and the toy hierarchy (absorption detected, independent near zero)"
import math
import pytest
import torch
from salmon.absorption import (token_absorption, k_sparse_probing, fit_probe, f1_scores, absorption_eval, first_letter_prompts,
                               single_token_words, ProbeTask, _span_positions)
from salmon.toy_absorption import toy_hierarchy, train_toy_sae, toy_task
from salmon.models import tiny_tokenizer


def _brute(x, f, D, p, main, mc=0.1, share=0.4):
    "Per-token SAEBench formulas written as plain loops"
    p = p / p.norm(); out = []
    for xt, ft in zip(x.double(), f.double()):
        P = float(xt @ p.double())
        q = [float(ft[i] * (D[i].double() @ p.double())) for i in range(len(D))]
        cos = [float(D[i].double() @ p.double() / D[i].double().norm()) for i in range(len(D))]
        M = sum(q[i] for i in main)
        cand = sorted([q[i] for i in range(len(D)) if i not in main and cos[i] >= mc and q[i] > 0], reverse=True)[:3]
        S = sum(cand)
        if P <= 0 or M >= P or S / P < share: a = 0.0
        elif M <= 0: a = 1.0
        else: aa = min(S, P - M); a = min(max(aa / (aa + M), 0.0), 1.0)
        top = max(range(len(D)), key=lambda i: q[i])
        full = all(abs(float(ft[i])) < 1e-8 for i in main) and cos[top] >= 0.025 and P >= 0 and q[top] / P >= share
        out.append((a, full))
    return out


@pytest.mark.parametrize('seed', range(5))
def test_token_absorption_matches_loops(seed):
    g = torch.Generator().manual_seed(seed)
    F, d = 12, 6
    D = torch.randn(F, d, generator=g); p = torch.randn(d, generator=g)
    f = torch.rand(40, F, generator=g) * (torch.rand(40, F, generator=g) < 0.4)
    x = f @ D + 0.1 * torch.randn(40, d, generator=g)
    main = [int(i) for i in torch.randperm(F, generator=g)[:2]]
    got = token_absorption(x, f, D, p, main)
    want = _brute(x, f, D, p, main)
    for (a, full), ga, gf in zip(want, got.absorption, got.full_absorption):
        assert math.isclose(a, ga, abs_tol=1e-6) and full == gf


def test_fragmentation_is_effective_count():
    D = torch.eye(4); p = torch.tensor([1., 1, 1, 1])
    f = torch.tensor([[1., 1, 1, 1], [1., 0, 0, 0], [0., 0, 0, 0]])
    t = token_absorption(f @ D, f, D, p, [0])
    assert t.frag_neff[0] == pytest.approx(4.0) and t.frag_neff[1] == pytest.approx(1.0) and math.isnan(t.frag_neff[2])
    assert t.frag_n90.tolist()[:2] == [4.0, 1.0]


def test_probe_and_f1():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(500, 8, generator=g); Y = torch.stack([X[:, 0] > 0, X[:, 1] < -0.5], 1)
    W, b = fit_probe(X, Y)
    assert (f1_scores(X @ W + b, Y) > 0.95).all()
    assert f1_scores(torch.tensor([[1.], [1], [-1]]), torch.tensor([[True], [False], [True]]))[0] == pytest.approx(0.5)


def test_ksparse_single_latent():
    g = torch.Generator().manual_seed(2)
    Fm = torch.rand(600, 10, generator=g) * (torch.rand(600, 10, generator=g) < 0.1); Y = torch.zeros(600, 1, dtype=torch.bool)
    Y[:150] = True; Fm[:150, 4] += 1.5
    _, sp = k_sparse_probing(Fm[:400], Y[:400], Fm[400:], Y[400:], k_max=5)
    assert sp[0] == [4]


def test_prompts_and_spans():
    tok = tiny_tokenizer()
    w = single_token_words(tok, max_per_letter=2)
    texts, spans = first_letter_prompts(list(w.word), n_icl=2)
    enc = tok(texts, return_offsets_mapping=True)
    for ids, off, sp, tid in zip(enc['input_ids'], enc['offset_mapping'], spans, w.token_id):
        pos, n = _span_positions(off, sp)
        if n == 1: assert ids[pos] == tid
    with pytest.raises(ValueError, match='no token overlaps'): _span_positions([(0, 0), (0, 3)], (5, 7))
    with pytest.raises(ValueError, match='expected \\[3, d\\]'): ProbeTask('x', ['a'], torch.zeros(2, 4), torch.zeros(3, 1), torch.ones(3), w.head(3))


@pytest.mark.parametrize('hierarchical', [True, False])
def test_toy_absorption(hierarchical):
    x, on, feats = toy_hierarchy(50_000, hierarchical, seed=3)
    sae = train_toy_sae(x[:40_000], steps=600, batch=512, lr=1e-2, seed=1)
    cos = (sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)) @ feats.t()
    c = absorption_eval(sae, toy_task(x[40_000:], on[40_000:]), k_max=1).classes.set_index('class')
    if hierarchical:
        assert ((cos[:, 0] > 0.5) & (cos[:, 1] > 0.5)).sum() == 1
        assert c.mean_absorption['f0'] == pytest.approx(0.2, abs=0.05) and c.full_absorption_rate['f0'] > 0.15
    else:
        assert (cos.abs().max(0).values > 0.95).all()
        assert c.mean_absorption['f0'] < 0.02 and c.full_absorption_rate['f0'] < 0.02
    assert (c.mean_absorption[['f2', 'f3']] < 0.02).all()
