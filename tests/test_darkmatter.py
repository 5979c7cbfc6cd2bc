"Exhaustive numeric checks of `salmon.darkmatter` against direct numpy computations (the notebook shows the lessons)."
import warnings
import numpy as np
import pandas as pd
import pytest
import torch
from salmon.bench import bench_darkmatter
from salmon.darkmatter import (NormalEq, PROTOCOLS, DarkMatterProtocol, PackedActivations, _psd_solve,
                               dark_matter, dark_matter_sae, dark_matter_stream, get_protocol, pack_sequences,
                               plot_dark_matter_grid, plot_norm_scatter, protocol_activations, train_mask)


def _data(n=1500, d=10, seed=0, mean=2.0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d)) @ g.normal(size=(d, d)) + mean
    e = 0.3 * x @ g.normal(size=(d, d)) + np.tanh(x) + 0.5 * g.normal(size=(n, d)) + 0.7
    return x, x - e, e


def _direct(x, e, train, intercept=True, ridge=0.0):
    "Reference: numpy lstsq (or closed-form ridge) on the rows, every metric from explicit residuals"
    def design(a): return np.hstack([a, np.ones((len(a), 1))]) if intercept else a
    Xtr, Xte = design(x[train]), design(x[~train])
    y = (e ** 2).sum(1)
    T = np.hstack([e, y[:, None]])
    if ridge == 0: B = np.linalg.lstsq(Xtr, T[train], rcond=None)[0]
    else:
        if intercept:
            mx, mt = x[train].mean(0), T[train].mean(0)
            Xc, Tc = x[train] - mx, T[train] - mt
            A = np.linalg.solve(Xc.T @ Xc + ridge * np.eye(x.shape[1]), Xc.T @ Tc)
            B = np.vstack([A, mt - mx @ A])
        else: B = np.linalg.solve(Xtr.T @ Xtr + ridge * np.eye(Xtr.shape[1]), Xtr.T @ T[train])
    out = {}
    for split, X, m in (('train', Xtr, train), ('test', Xte, ~train)):
        R = T[m] - X @ B; Tm = T[m]; d = x.shape[1]
        sst = ((Tm - Tm.mean(0)) ** 2).sum(0); ssr = (R ** 2).sum(0)
        sstx = ((x[m] - x[m].mean(0)) ** 2).sum()
        out[split] = dict(r2_vector=np.mean(1 - ssr[:d] / sst[:d]), r2_vector_pooled=1 - ssr[:d].sum() / sst[:d].sum(),
                          r2_norm=1 - ssr[d] / sst[d], fvu_nonlinear=ssr[:d].sum() / sstx, fvu_sae=(e[m] ** 2).sum() / sstx,
                          n_tokens=int(m.sum()))
    return B, out


@pytest.mark.parametrize('intercept', [True, False])
@pytest.mark.parametrize('split', ['sequential', 'random'])
@pytest.mark.parametrize('groups', [None, 25])
def test_matches_lstsq(intercept, split, groups):
    x, xh, e = _data()
    res = dark_matter(x, xh, split=split, groups=groups, intercept=intercept, seed=3, chunk_rows=217)
    train = train_mask(len(x), split=split, groups=groups, seed=3)
    B, ref = _direct(x, e, train, intercept)
    d = x.shape[1]
    np.testing.assert_allclose(res.coef, B[:d, :d], atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(res.norm_coef, B[:d, d], atol=1e-6, rtol=1e-6)
    if intercept: np.testing.assert_allclose(res.bias, B[d, :d], atol=1e-6, rtol=1e-6)
    else: assert (res.bias == 0).all() and res.norm_bias == 0
    for s in ('train', 'test'):
        for k, v in ref[s].items():
            np.testing.assert_allclose(res.metrics.loc[('raw', s), k], v, atol=1e-6, rtol=1e-6, err_msg=f'{s} {k}')


@pytest.mark.parametrize('intercept', [True, False])
def test_ridge_matches_closed_form(intercept):
    x, xh, e = _data(n=400, d=12, seed=1)
    res = dark_matter(x, xh, split='sequential', intercept=intercept, ridge=25.0)
    train = train_mask(len(x), split='sequential')
    B, ref = _direct(x, e, train, intercept, ridge=25.0)
    np.testing.assert_allclose(res.coef, B[:12, :12], atol=1e-8)
    np.testing.assert_allclose(res.metrics.loc[('raw', 'test'), 'r2_vector'], ref['test']['r2_vector'], atol=1e-8)
    assert res.settings['ridge'] == 25.0


def test_rank_deficient_gives_min_norm_solution():
    x, xh, e = _data(n=600, d=6, seed=2)
    x2 = np.hstack([x, x[:, :2]]); e2 = np.hstack([e, e[:, :2]])
    res = dark_matter(x2, x2 - e2, split='sequential')
    assert res.settings['solver'] == 'eigh-pinv'
    B, ref = _direct(x2, e2, train_mask(600, split='sequential'))
    np.testing.assert_allclose(res.coef, B[:8, :8], atol=1e-6)
    np.testing.assert_allclose(res.metrics.loc[('raw', 'test'), 'r2_vector'], ref['test']['r2_vector'], atol=1e-6)


def test_underdetermined_train_warns_and_is_min_norm():
    x, xh, e = _data(n=20, d=20, seed=4)
    train = train_mask(20, split='sequential', train_frac=0.5)
    with pytest.warns(UserWarning, match='training rows'): res = dark_matter(x, xh, split='sequential', train_frac=0.5, intercept=False)
    B, ref = _direct(x, e, train, intercept=False)
    np.testing.assert_allclose(res.coef, B[:, :20], atol=1e-6)
    # with an intercept the bias is unpenalised (min-norm over the slope only), so only the interpolation is shared with lstsq
    with pytest.warns(UserWarning): res = dark_matter(x, xh, split='sequential', train_frac=0.5)
    np.testing.assert_allclose(res.metrics.loc[('raw', 'train'), 'r2_vector'], 1.0, atol=1e-6)


def test_chunking_and_torch_inputs_do_not_change_results():
    x, xh, _ = _data(n=999)
    a = dark_matter(x, xh, groups=7)
    b = dark_matter(torch.tensor(x), torch.tensor(xh), groups=7, chunk_rows=50)
    c = dark_matter_stream(((x[i:i+111], xh[i:i+111]) for i in range(0, 999, 111)), groups=7, n_rows=999)
    for r in (b, c): np.testing.assert_allclose(r.metrics.values, a.metrics.values, rtol=1e-9, atol=1e-12)


def test_float32_inputs_accumulate_in_float64():
    x, xh, _ = _data(n=3000, mean=50.0)
    r64 = dark_matter(x, xh)
    r32 = dark_matter(x.astype(np.float32), xh.astype(np.float32))
    # only the input rounding differs (relative 6e-8); accumulation is float64
    np.testing.assert_allclose(r32.metrics.loc[('raw', 'test'), 'r2_vector'], r64.metrics.loc[('raw', 'test'), 'r2_vector'], atol=1e-4)


def test_oracles_linear_and_noise():
    g = np.random.default_rng(5)
    x = g.normal(size=(5000, 12)) @ g.normal(size=(12, 12))
    e = x @ g.normal(size=(12, 12)) + 1e-3 * g.normal(size=(5000, 12))
    lin = dark_matter(x, x - e).metrics.loc[('raw', 'test')]
    assert lin.r2_vector > 0.9999 and lin.r2_vector_pooled > 0.9999 and lin.fvu_nonlinear < 1e-5
    noise = dark_matter(x, x - g.normal(size=(5000, 12)), split='sequential').metrics.loc['raw']
    assert -0.02 < noise.loc['test', 'r2_vector'] < 0 < noise.loc['train', 'r2_vector'] < 0.02
    assert abs(noise.loc['test', 'r2_norm']) < 0.02


def test_shrinkage_variant():
    x, xh, e = _data(n=2000)
    res = dark_matter(x, xh, split='sequential')
    k = round(0.6 * 2000)
    s = (x[:k] * xh[:k]).sum() / (xh[:k] ** 2).sum()
    assert res.s_star == pytest.approx(s, rel=1e-10)
    es = x - s * xh
    _, ref = _direct(x, es, train_mask(2000, split='sequential'))
    for k_ in ('r2_vector', 'r2_norm', 'fvu_nonlinear', 'fvu_sae'):
        np.testing.assert_allclose(res.metrics.loc[('shrinkage', 'test'), k_], ref['test'][k_], atol=1e-6, err_msg=k_)
    m = res.metrics
    np.testing.assert_allclose(m.loc[('shrinkage', 'test'), 'fvu_nonlinear'], s ** 2 * m.loc[('raw', 'test'), 'fvu_nonlinear'], rtol=1e-8)
    z = dark_matter(x, np.zeros_like(x))       # x_hat = 0: s* is irrelevant, both variants identical
    np.testing.assert_allclose(z.metrics.loc['shrinkage'].values, z.metrics.loc['raw'].values)


def test_shares_add_up_on_train():
    x, xh, e = _data()
    m = dark_matter(x, xh).metrics.loc[('raw', 'train')]
    # OLS with intercept: residual ⟂ prediction on the training rows, so the shares sum to 1
    assert m.linear_share + m.nonlinear_share == pytest.approx(1.0, abs=1e-8)
    assert m.r2_nonlinear == pytest.approx(1 - m.fvu_nonlinear)


def test_split_properties():
    for split in ('random', 'sequential'):
        m = train_mask(10_000, split=split, groups=100, seed=9)
        per = m.reshape(100, 100)
        assert (per.all(1) == per.any(1)).all()                        # groups never straddle
    assert train_mask(1000, split='sequential', train_frac=0.25).sum() == 250
    fr = [train_mask(20_000, seed=s).mean() for s in range(3)]
    assert all(abs(f - 0.6) < 0.015 for f in fr) and len(set(fr)) == 3  # seeds differ
    ids = np.repeat([5, 2, 9], 4)
    m = train_mask(12, groups=ids, seed=1)
    assert (m.reshape(3, 4).all(1) == m.reshape(3, 4).any(1)).all()
    # a group's side does not depend on how many rows follow
    assert (train_mask(500, groups=10, seed=2) == train_mask(1000, groups=10, seed=2)[:500]).all()


def test_chunk_groups_keep_chunks_whole():
    x, xh, e = _data(n=1200)
    chunks = [(x[i:i+100], xh[i:i+100]) for i in range(0, 1200, 100)]
    res = dark_matter_stream(chunks, groups='chunk', seed=4)
    assert res.metrics.loc[('raw', 'train'), 'n_tokens'] % 100 == 0


@pytest.mark.parametrize('call, msg', [
    (lambda x: dark_matter(x, x[:, :3]), 'expected the same [n_tokens, d]'),
    (lambda x: dark_matter(x[0], x[0]), 'expected the same [n_tokens, d]'),
    (lambda x: dark_matter(x, x, train_frac=1.5), 'train_frac=1.5 is out of range'),
    (lambda x: dark_matter(x, x, split='blocks'), "split='blocks' is not valid"),
    (lambda x: dark_matter(x, x, groups=0), 'groups=0 is out of range'),
    (lambda x: dark_matter(x, x, groups='chunk'), "groups='chunk' needs a chunked source"),
    (lambda x: dark_matter(x, x, groups=np.zeros(5, int)), 'groups has 5 ids for 1500 rows'),
    (lambda x: dark_matter(x, x, groups=np.full(1500, -1)), 'non-negative integer ids'),
    (lambda x: dark_matter(x, x, ridge=-0.1), 'ridge=-0.1 is out of range'),
    (lambda x: dark_matter(x[:3], x[:3]), 'the split left'),
    (lambda x: dark_matter_stream([(x, x)], split='sequential'), 'needs the number of rows'),
    (lambda x: dark_matter_stream([(x, x)], split='sequential', groups='chunk', n_rows=1500), "groups='chunk' needs split='random'"),
    (lambda x: dark_matter_stream([(x, x)], n_rows=10), 'more than n_rows=10'),
    (lambda x: dark_matter_stream([(x, x)], n_rows=2000), 'expected n_rows=2000'),
    (lambda x: dark_matter_stream([(x, x), (x[:, :4], x[:, :4])]), 'chunk 1 has d=4; expected d=10'),
    (lambda x: dark_matter_stream([]), 'the source is empty'),
    (lambda x: dark_matter(np.where(np.arange(10) == 3, np.inf, x), x), 'inf or nan'),
])
def test_bad_input(call, msg):
    x, _, _ = _data()
    with pytest.raises(ValueError, match=None) as ex: call(x)
    assert msg in str(ex.value), str(ex.value)


class _StandIn:
    "A random linear+ReLU encoder with a least-squares decoder: just `encode`/`decode`"
    def __init__(self, x, F=48, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(x.shape[1], F, generator=g) / x.shape[1] ** 0.5
        self.D = torch.linalg.lstsq(self.encode(x), x).solution
    def encode(self, x): return torch.relu(x @ self.W - 0.3)
    def decode(self, f): return f @ self.D


def test_dark_matter_sae_equals_arrays_and_counts_l0():
    x = torch.tensor(_data(n=2000)[0], dtype=torch.float32)
    sae = _StandIn(x)
    xh = sae.decode(sae.encode(x))
    ref = dark_matter(x, xh, split='sequential', groups=50)
    class Cache:                                   # a source that knows its size, like ActivationCache
        n_tokens = 2000
        def __iter__(self): return iter(x.split(300))
    for src in (x, Cache()):
        r = dark_matter_sae(sae, src, split='sequential', groups=50, chunk_rows=128)
        np.testing.assert_allclose(r.metrics.values, ref.metrics.values, rtol=1e-6, atol=1e-9)
        assert r.settings['l0'] == pytest.approx((sae.encode(x) != 0).sum(1).float().mean().item(), rel=1e-6)


def test_result_row_and_predictions():
    x, xh, e = _data()
    res = dark_matter(x, xh)
    row = res.row()
    for k in ('r2_norm', 'r2_vector', 'fvu_nonlinear', 'fvu_sae', 'r2_vector_shrink', 's_star', 'n_train', 'n_test', 'split', 'intercept'):
        assert k in row
    assert row['n_train'] + row['n_test'] == len(x)
    np.testing.assert_allclose(res.predict_error(x), x @ res.coef + res.bias)
    assert res.predict_norm(x).shape == (len(x),)
    assert 'r2_vector' in repr(res)
    with pytest.raises(ValueError, match="split='val' is not valid"): res.row('val')


def test_protocols():
    assert PROTOCOLS['paper'].probe_kw() == dict(train_frac=0.6, split='sequential', groups=108, intercept=True)
    assert PROTOCOLS['salmon'].probe_kw()['groups'] == 127 and PROTOCOLS['salmon'].split == 'random'
    p = DarkMatterProtocol('x', seq_len=16, skip_first=4)
    assert get_protocol(p) is p
    with pytest.raises(ValueError, match="protocol='x' is not valid"): get_protocol('x')


class _Tok:
    "A character-level stand-in tokenizer"
    bos_token_id, eos_token_id = 1, 2
    def __call__(self, t, add_special_tokens=True): return {'input_ids': [3 + ord(c) % 50 for c in t]}


def test_pack_sequences():
    tok = _Tok()
    ids = pack_sequences(['abcdefg', 'hij', 'klmnopqrstu'], tok, seq_len=5, n_seqs=None)
    flat = [3 + ord(c) % 50 for c in 'abcdefg'] + [2] + [3 + ord(c) % 50 for c in 'hij'] + [2] + [3 + ord(c) % 50 for c in 'klmnopqrstu']
    assert ids.shape == (len(flat) // 4, 5) and (ids[:, 0] == 1).all()
    assert ids[:, 1:].flatten().tolist() == flat[:ids[:, 1:].numel()]
    assert len(pack_sequences(['a' * 100], tok, seq_len=5, n_seqs=3)) == 3
    with pytest.warns(UserWarning, match='only 2 of n_seqs=10'): pack_sequences(['a' * 8], tok, seq_len=5, n_seqs=10)
    with pytest.raises(ValueError, match='fewer than one sequence'): pack_sequences(['ab'], tok, seq_len=5)
    with pytest.raises(TypeError, match='single str'): pack_sequences('abc', tok)
    with pytest.raises(TypeError, match=r'texts\[1\] is int'): pack_sequences(['abc', 5], tok, seq_len=3)
    with pytest.raises(ValueError, match='seq_len=1 is out of range'): pack_sequences(['abc'], tok, seq_len=1)


def test_packed_activations_on_tiny_model():
    from salmon.models import tiny_lm, torch_model
    from salmon.data import medical_qa
    lm = tiny_lm()
    acts = protocol_activations(lm, medical_qa('test', limit=8), 1, DarkMatterProtocol('t', seq_len=32, skip_first=3, n_seqs=6), batch_size=4)
    assert acts.n_rows == 6 * 29 and len(acts) == 2
    a = acts.collect()
    with torch.no_grad(): hs = torch_model(lm)(acts.ids, output_hidden_states=True).hidden_states[2]
    torch.testing.assert_close(a, hs[:, 3:].reshape(-1, hs.shape[-1]), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match='skip_first=32 is out of range'): PackedActivations(lm, acts.ids, 1, skip_first=32)
    with pytest.raises(ValueError, match='expected \\[n_sequences, seq_len\\]'): PackedActivations(lm, acts.ids[0], 1)
    sae = _StandIn(a)
    r = dark_matter_sae(sae, acts, split='sequential', groups=acts.group_size, ridge=1e-3)   # n_rows read from the source
    assert r.row()['n_train'] == 29 * round(0.6 * 6)


def test_plots():
    df = pd.DataFrame([dict(family=f, width=w, l0=l, r2_norm=np.random.rand(), r2_vector=np.random.rand(), fvu_nonlinear=np.random.rand())
                       for f in ('a', 'b') for w in (128, 256) for l in (4, 8, 16)])
    fig = plot_dark_matter_grid(df)
    assert len(fig.axes) == 12
    one = plot_dark_matter_grid(df[df.width == 128], metrics=('r2_norm',))   # one width: falls back to markers
    assert len(one.axes) == 4
    with pytest.raises(ValueError, match="df lacks columns \\['l0'\\]"): plot_dark_matter_grid(df.drop(columns='l0'))
    x, xh, _ = _data()
    res = dark_matter(x, xh)
    f = plot_norm_scatter(res, x, xh, max_points=100)
    assert 'R² =' in f.axes[0].get_title()
    with pytest.raises(ValueError, match='expected the same'): plot_norm_scatter(res, x, xh[:, :2])


def test_bench_small_agrees():
    b = bench_darkmatter(n_tokens=2000, d=16)
    assert b['max_coef_diff'] < 1e-6 and b['r2_vector_diff'] < 1e-6 and b['n_train'] == 1200


def test_sequential_split_with_group_ids():
    "Explicit group ids with a sequential split: group 0 trains, group 1 tests (how the pipeline separates corpora)"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)); xh = x * 0.9 + rng.normal(scale=0.1, size=x.shape)
    groups = np.r_[np.zeros(300, np.int64), np.ones(100, np.int64)]
    r = dark_matter(x, xh, split='sequential', train_frac=0.5, groups=groups)
    m = r.metrics
    assert int(m.loc[('raw', 'train'), 'n_tokens']) == 300 and int(m.loc[('raw', 'test'), 'n_tokens']) == 100
