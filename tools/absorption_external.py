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
    def run_fa_seeded(**kw):
        random.seed(seed + 1)
        return run_fa(**kw, experiment_dir=art/'feature_absorption', sparse_probing_experiment_dir=art/'k_sparse_probing',
                      probes_dir=art/'probes')
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

