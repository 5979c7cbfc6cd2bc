"""SAEBench 0.6.0's own first-letter absorption (`sae_bench.evals.absorption.main.run_eval`) on the SAE, model and vocabulary
that `python -m salmon.compare prepare-absorption` wrote. Runs in the side environment of `make compare` (salmon is not imported).

SAEBench's algorithm runs unchanged. The harness fixes only what SAEBench leaves to its caller or to chance, the same way salmon
fixes it:
- the vocabulary: the list in inputs.json (SAEBench iterates `tokenizer.vocab`, whose order changes from process to process);
- the seeds: Python's `random` is seeded with `seed` before the probe data are drawn and with `seed + 1` before the absorption
  prompts; torch with `seed` before the ground-truth probe and before the k-sparse L1 probe are initialised and shuffled;
- the model: the TransformerLens model already loaded offline (SAEBench would download it);
- the output: SAEBench's probe cache and results go to the work folder (it caches probes inside its installed package);
- the thresholds `min_feats_for_eval` and `min_GT_probe_f1` as inputs.json says (the same on salmon's side).

It also writes the activations SAEBench read (TransformerLens, `blocks.L.hook_resid_post` at `prompt_token_pos`), one row per
prompt, to `saebench_activations.safetensors` + `saebench_activations.json` (the prompts, in row order): the probe-training
prompts (SAEBench's own `data.npz`) and the fresh absorption prompts (recorded as `run_with_cache` returns them). salmon's side
of `python -m salmon.compare report` reads these, so both sides start from the same activations.
"""
import functools, json, os, random, shutil
from pathlib import Path

import torch


def _seeded(fn, seed_fn):
    "`fn` with `seed_fn()` called first"
    @functools.wraps(fn)
    def run(*a, **kw):
        seed_fn()
        return fn(*a, **kw)
    return run


class _Recorder:
    "Wraps `tl.run_with_cache`: keeps each prompt's activation at `pos` of the hooked point"
    def __init__(self, tl, pos):
        self.pos, self.run, self.acts = pos, tl.run_with_cache, {}
    def __call__(self, prompts, names_filter, **kw):
        logits, cache = self.run(prompts, names_filter=names_filter, **kw)
        h = cache[names_filter[0]][:, self.pos, :].float().cpu()
        for p, x in zip(prompts, h): self.acts.setdefault(p, x.clone())
        return logits, cache


def _save_activations(work, art, tl, layer, fresh, pos):
    "The probe prompts' activations (SAEBench's data.npz, its train/test csv) and the fresh prompts', one row per prompt"
    import numpy as np, pandas as pd
    from safetensors.torch import save_file
    d = art/'probes'/tl.cfg.model_name/f'layer_{layer}'
    npz = np.load(d/'data.npz')
    prompts, rows = [], []
    for split in ('train', 'test'):
        df = pd.read_csv(d/f'{split}_df.csv', keep_default_na=False, na_values=[''])
        prompts += df.prompt.tolist(); rows.append(torch.from_numpy(npz[f'X_{split}']).float())
    prompts += list(fresh); rows.append(torch.stack(list(fresh.values())) if fresh else torch.zeros(0, rows[0].shape[1]))
    save_file({'acts': torch.cat(rows).contiguous()}, str(Path(work)/'saebench_activations.safetensors'))
    (Path(work)/'saebench_activations.json').write_text(json.dumps(dict(
        prompts=prompts, n_probe=len(prompts) - len(fresh), n_fresh=len(fresh), prompt_token_pos=pos,
        hook=f'blocks.{layer}.hook_resid_post', source='TransformerLens, as SAEBench read them')))
    return len(prompts)


def saebench_absorption(tl, sae, work, inp):
    "SAEBench's run_eval on `sae`; returns its mean metrics and its per-letter details (None when it refuses)"
    import sae_bench.evals.absorption.common as common
    import sae_bench.evals.absorption.feature_absorption as fa
    import sae_bench.evals.absorption.k_sparse_probing as ksp
    import sae_bench.evals.absorption.main as ab
    from sae_bench.evals.absorption.eval_config import AbsorptionEvalConfig
    a = inp['absorption']; vocab, seed = list(a['words']), int(a['seed'])
    art = Path(work).resolve()/'saebench_artifacts'
    shutil.rmtree(art, ignore_errors=True); (art/'results').mkdir(parents=True)
    common.get_alpha_tokens = fa.get_alpha_tokens = lambda tokenizer, **kw: list(vocab)
    common.create_dataset_probe_training = _seeded(common.create_dataset_probe_training, lambda: random.seed(seed))
    common.train_linear_probe_for_task = _seeded(common.train_linear_probe_for_task, lambda: torch.manual_seed(seed))
    ksp.train_sparse_multi_probe = _seeded(ksp.train_sparse_multi_probe, lambda: torch.manual_seed(seed))
    run_ksp, run_fa = ab.run_k_sparse_probing_experiment, ab.run_feature_absortion_experiment
    ab.run_k_sparse_probing_experiment = lambda **kw: run_ksp(**kw, experiment_dir=art/'k_sparse_probing', probes_dir=art/'probes')
    rec = _Recorder(tl, None)
    def run_fa_seeded(**kw):
        random.seed(seed + 1)
        rec.pos = kw['prompt_token_pos']; tl.run_with_cache = rec   # the calculator reads the model through run_with_cache
        try: return run_fa(**kw, experiment_dir=art/'feature_absorption', sparse_probing_experiment_dir=art/'k_sparse_probing',
                           probes_dir=art/'probes')
        finally: del tl.run_with_cache
    ab.run_feature_absortion_experiment = run_fa_seeded
    class _TL:   # SAEBench loads the model by name from the hub; hand it the one loaded offline
        @staticmethod
        def from_pretrained_no_processing(*a, **kw): return tl
    ab.HookedTransformer = _TL
    cfg = AbsorptionEvalConfig(model_name=tl.cfg.model_name, random_seed=seed, min_feats_for_eval=int(a['min_letters']),
                               min_GT_probe_f1=float(a['min_probe_f1']), llm_batch_size=int(a['llm_batch_size']), llm_dtype='float32')
    cwd = os.getcwd(); os.chdir(art)   # run_eval also writes ./artifacts/absorption
    try: res = ab.run_eval(cfg, [('salmon', sae)], 'cpu', str(art/'results'), force_rerun=True)
    finally: os.chdir(cwd); torch.set_grad_enabled(False)
    ksp_df = next((art/'k_sparse_probing').rglob('*_metrics.parquet'), None)
    import pandas as pd
    out = dict(words=len(vocab), seed=seed, min_letters=a['min_letters'], min_probe_f1=a['min_probe_f1'])
    if (art/'probes').exists(): out['activations_saved'] = _save_activations(work, art, tl, inp['layer'], rec.acts,
                                                                          cfg.prompt_token_pos)
    if ksp_df is not None:
        m = pd.read_parquet(ksp_df)
        out['probe_f1'] = dict(zip(m.letter, m.f1_probe.astype(float)))
    if not res:
        out.update(refused=True, note=f"SAEBench: fewer than {a['min_letters']} letters with probe F1 > {a['min_probe_f1']}")
        return out
    r = next(iter(res.values()))
    out.update(refused=False, mean=r['eval_result_metrics']['mean'],
               details=[{k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()} for d in r['eval_result_details']])
    raw = next((art/'feature_absorption').rglob('*.parquet'), None)
    if raw is not None:   # per-word rows, for a per-letter table
        df = pd.read_parquet(raw)
        out['tokens'] = df[['letter', 'token', 'absorption_fraction', 'is_full_absorption']].astype(
            dict(absorption_fraction=float, is_full_absorption=bool)).to_dict('records')
    return out

