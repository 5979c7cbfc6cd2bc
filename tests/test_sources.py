"""Every held-out-text evaluation table broken down by `source_dataset`, on local files in the exact hub schemas and the tiny
model: each by-source table has every source of the held-out split, and where a metric is a per-token mean the per-source
numbers recombine (token-weighted) to the table's overall number on the same texts."""
from dataclasses import replace
import numpy as np
import pytest
from salmon.data import MEDICAL_HUB, write_hub_fixtures
from salmon.pipeline import (get_preset, held_out_by_source, preset_texts, stage_by_source, stage_caches, stage_darkmatter,
                             stage_eval, stage_saes, stage_sources, stage_specificity)

TOKEN_MEANS = ['l0', 'l1', 'mse', 'nmse', 'cossim', 'l2_ratio', 'err_norm']     # means over reconstructed tokens (`tokens`)
PRED_MEANS = ['ce_clean', 'ce_sae', 'ce_zero', 'delta_ce', 'kl_sae', 'kl_zero']  # over scored predictions (`predicted_tokens`)


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A streamed tiny run on the six-source hub mirror whose overall tables cover the whole held-out split"
    hub = write_hub_fixtures(tmp_path_factory.mktemp('hub'), n_per_source=24)
    paper = get_preset('gemma-2-2b')
    p = replace(get_preset('tiny'), name='tiny-sources', source=paper.source, mix_seed=paper.mix_seed, stream=True, hub_root=str(hub),
                families=('domain',), train_tokens=256 * 24, probe_tokens=2_000, eval_texts=100, eval_max_len=64, eval_per_source=64)
    out = tmp_path_factory.mktemp('run')
    stage_caches(p, out, progress=False)
    saes = stage_saes(p, out, progress=False)
    return p, out, saes, stage_by_source(p, out, saes, progress=False)


def test_held_out_covers_the_split(run):
    p = run[0]
    held = list(preset_texts(p, 'medical', 'test'))
    by = held_out_by_source(p, p.eval_per_source)
    assert set(by) == {n for n, _, _ in MEDICAL_HUB}
    assert sorted(t for ts in by.values() for t in ts) == sorted(held)      # eval_per_source covers every held-out text here
    assert len(held) <= p.eval_texts                                        # and so does the overall evaluation


def test_every_table_has_every_source(run):
    p, out, saes, tabs = run
    sources = set(held_out_by_source(p, p.eval_per_source))
    assert set(tabs) == {'eval', 'darkmatter', 'specificity'}
    for name, t in tabs.items():
        assert set(t.source_dataset) == sources, name
        assert len(t) == len(sources) * len(saes), name
        assert t.groupby('name').n_texts.sum().eq(len(list(preset_texts(p, 'medical', 'test')))).all(), name
    for f in ['eval/medical-test-by-source.csv', 'darkmatter-by-source.csv', 'specificity-by-source.csv']: assert (out/f).exists()


def test_eval_recombines(run):
    p, out, saes, tabs = run
    ev = stage_eval(p, out, saes, progress=False)
    ev = ev[ev.eval_corpus == 'medical'].set_index('name')
    for name, g in tabs['eval'].groupby('name'):
        assert g.tokens.sum() == ev.loc[name, 'tokens'] and g.predicted_tokens.sum() == ev.loc[name, 'predicted_tokens']
        for col, w in [*((c, 'tokens') for c in TOKEN_MEANS), *((c, 'predicted_tokens') for c in PRED_MEANS)]:
            np.testing.assert_allclose(np.average(g[col], weights=g[w]), ev.loc[name, col], rtol=1e-5, err_msg=f'{name} {col}')


def test_darkmatter_recombines(run):
    p, out, saes, tabs = run
    dm = stage_darkmatter(p, out, saes).set_index('name')
    for name, g in tabs['darkmatter'].groupby('name'):
        assert g.n_test.sum() == dm.loc[name, 'n_test']                   # the held-out rows, split by source
        assert (g.n_train == dm.loc[name, 'n_train']).all()               # one fit: the same training rows ...
        np.testing.assert_allclose(g.s_star, dm.loc[name, 's_star'], rtol=1e-9)   # ... and the same shrinkage scale
        assert g[['r2_norm', 'r2_vector', 'fvu_nonlinear']].notna().all().all()


def test_specificity_by_source(run):
    p, out, saes, tabs = run
    sp = stage_specificity(p, out, saes).set_index('name')
    ev = tabs['eval'].set_index(['name', 'source_dataset'])
    for (name, src), r in tabs['specificity'].set_index(['name', 'source_dataset']).iterrows():
        assert r.tokens == ev.loc[(name, src), 'tokens']                  # the domain side: that source's scored tokens
        assert r.n_latents == sp.loc[name, 'n_latents'] and 0 <= r.frac_domain_specific <= 1


def test_paper_convention_by_source(run):
    p, out, saes, tabs = run
    t = stage_sources(p, out, saes, progress=False, convention='paper')
    assert (out/'eval'/'medical-test-paper-by-source.csv').exists()
    assert set(t.source_dataset) == set(tabs['eval'].source_dataset) and set(t.convention) == {'paper'}
    assert (t.tokens.values > tabs['eval'].tokens.values).all()          # the paper's convention keeps BOS among the tokens
