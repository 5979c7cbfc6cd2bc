"""Paper presets on local files in the exact hub schemas: every source in the corpus and the held-out split, no held-out text in
training, a streamed trainer that reads each training text at most once per SAE, and a kill + resume that is bit-identical."""
import json
from dataclasses import replace
import pytest
import torch
import salmon.pipeline as pl
from salmon.data import MEDICAL_HUB, is_held_out, write_hub_fixtures
from salmon.pipeline import get_preset, preset_texts, stage_caches, stage_saes


@pytest.fixture(scope='module')
def hub(tmp_path_factory):
    return write_hub_fixtures(tmp_path_factory.mktemp('hub'), n_per_source=64)


def streamed(hub, **kw):
    "The tiny model with a paper preset's data and training options, on the local hub mirror"
    paper = get_preset('gemma-2-2b')
    return replace(get_preset('tiny'), name='tiny-stream', source=paper.source, mix_seed=paper.mix_seed, stream=paper.stream,
                   hub_root=str(hub), families=('domain',), train_tokens=256 * 24, probe_tokens=2_000, **kw)


def tracing(monkeypatch):
    "Record every text the LM traces from now on"
    log, orig = [], pl.ActivationStream.trace_batch
    def rec(self, batch): log.extend(batch); return orig(self, batch)
    monkeypatch.setattr(pl.ActivationStream, 'trace_batch', rec)
    return log


def test_paper_corpus_has_every_source(hub):
    p = replace(get_preset('gemma-2-9b'), hub_root=str(hub))
    names = {n for n, _, _ in MEDICAL_HUB}
    tr = list(preset_texts(p, 'medical', 'train', with_meta=True))
    te = list(preset_texts(p, 'medical', 'test', with_meta=True))
    assert {r['source_dataset'] for r in tr} == names
    assert {r['source_dataset'] for r in te} == names
    assert not {r['text'] for r in tr} & {r['text'] for r in te}
    assert all(is_held_out(r['text']) for r in te) and not any(is_held_out(r['text']) for r in tr)
    assert len({r['source_dataset'] for r in tr[:20]}) >= 4          # a prefix is mixed, not MedQA first
    gen = list(preset_texts(p, 'general', 'train', limit=5, with_meta=True))
    assert len(gen) == 5 and all('pile_set_name' in r['meta'] for r in gen)


def test_streamed_reads_each_text_once(hub, tmp_path, monkeypatch):
    p = streamed(hub, group_size=1)
    caches = stage_caches(p, tmp_path, progress=False)
    assert list(caches.corpus + '-' + caches.split) == ['medical-probe', 'medical-test', 'general-test']
    assert not (tmp_path/'cache'/'medical-train').exists()
    log = tracing(monkeypatch)
    saes = stage_saes(p, tmp_path, progress=False)
    assert len(saes) == 2
    held = set(preset_texts(p, 'medical', 'test'))
    assert not held & set(log)                                   # no held-out text is traced for training
    n_groups = 2                                                 # group_size=1: each target L0 streams the corpus once
    per_group = len(log) // n_groups
    for g in range(n_groups):
        chunk = log[g * per_group:(g + 1) * per_group]
        assert len(chunk) == len(set(chunk)), 'a training text was read twice for one SAE'
    assert log[:per_group] == log[per_group:]                    # both groups read the same seeded order
    for s in saes.values(): assert s.cfg['n_tokens_trained'] == p.train_tokens and s.cfg['streamed']


def test_kill_and_resume_is_bit_identical(hub, tmp_path, monkeypatch):
    p = streamed(hub)
    log = tracing(monkeypatch)
    whole = stage_saes(p, tmp_path/'whole', progress=False)
    whole_log = list(log)
    monkeypatch.undo()
    orig, kill_at, seen = pl.ActivationStream.trace_batch, len(whole_log) * 3 // 4, []   # past the first buffer refill
    def dying(self, batch):                                      # the process dies in the LM pass that reaches text `kill_at`
        if len(seen) + len(batch) > kill_at: raise RuntimeError('killed')
        seen.extend(batch); return orig(self, batch)
    monkeypatch.setattr(pl.ActivationStream, 'trace_batch', dying)
    with pytest.raises(RuntimeError, match='killed'): stage_saes(p, tmp_path/'killed', progress=False)
    ckpt = sorted((tmp_path/'killed'/'saes'/'domain'/'F256'/'checkpoints').glob('step_*'))[-1]   # the newest checkpoint
    assert 'stream.pt' in json.loads((ckpt/'manifest.json').read_text())['files']   # the source's position is saved and hashed
    step = json.loads((ckpt/'state.json').read_text())['step']
    assert 0 < step < p.train_tokens // p.train_batch           # killed part-way, after a checkpoint
    n_read = torch.load(ckpt/'stream.pt', weights_only=True)['source']['source']['n_texts']
    monkeypatch.undo()
    log = tracing(monkeypatch)
    resumed = stage_saes(p, tmp_path/'killed', progress=False)
    assert 0 < n_read and log == whole_log[n_read:]              # the resumed stream traces exactly the texts not yet read
    assert whole.keys() == resumed.keys()
    for k in whole:
        a, b = whole[k].state_dict(), resumed[k].state_dict()
        assert all(torch.equal(a[n], b[n]) for n in a), f'{k} differs after kill + resume'


def test_one_pass_caps_the_token_budget(tmp_path):
    small = write_hub_fixtures(tmp_path/'hub', n_per_source=6)
    p = replace(streamed(small), train_tokens=256 * 10_000, target_l0s=(8,))
    n = pl.pass_tokens(p, 'medical', tmp_path)
    assert 0 < n < p.train_tokens and pl.pass_tokens(p, 'medical', tmp_path) == n     # counted once, then read back
    (sae,) = stage_saes(p, tmp_path, progress=False).values()
    assert sae.cfg['n_tokens_trained'] == n // p.train_batch * p.train_batch          # one pass, no token twice
    assert sae.cfg['train']['n_tokens'] == n // p.train_batch * p.train_batch         # the schedule spans that pass
