"""CUDA checks for a lent GPU machine: sparse-vs-dense correctness and speed of the training step on CUDA,
and the tiny pipeline end to end on CUDA. Writes one JSON. `make gpu-check` on a CUDA machine; see tools/gpu_check.sh."""
import argparse, json, math, sys, time, traceback
from pathlib import Path
import torch
from salmon.sae import JumpReLUSAE
from salmon.train import TrainConfig, fused_grads, sparse_grads, reference_loss, train_grads, train_saes


def sae_at_l0(d, F, l0, B, dev, seed=0):
    "An SAE whose thresholds give L0 ≈ `l0` on the returned batch"
    torch.manual_seed(seed)
    sae = JumpReLUSAE(d, F, bandwidth=0.02, device=dev)
    x = torch.randn(B, d, device=dev) / d ** 0.5
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.02)
        sae.b_enc.normal_(0, 0.01)
        h = sae.pre_acts(x)
        q = torch.kthvalue(h.float().cpu(), max(1, int(B * (1 - l0 / F))), dim=0).values.to(dev)
        sae.theta.copy_(q.clamp(min=0) + 1e-4)                      # off the batch's own values: no ties at θ
    return sae, x


def rel(a, b):
    "Relative Frobenius distance of b from a"
    return ((a.double() - b.double()).norm() / a.double().norm().clamp(min=1e-30)).item()


def correctness(dev, d, F, B, l0s):
    rows = []
    for l0 in l0s:
        sae, x = sae_at_l0(d, F, l0, B, dev)
        cfg = TrainConfig(d_sae=F, target_l0=float(l0), batch_size=B, n_tokens=B)
        a, b = fused_grads(sae, x, cfg, 0.3), sparse_grads(sae, x, cfg, 0.3)
        r = dict(d=d, F=F, B=B, target=l0, l0=a['l0'].item(), n_window=a['n_window'], same_l0=a['l0'].item() == b['l0'].item(),
                 same_window=a['n_window'] == b['n_window'], loss_rel=abs(b['loss'].item() / a['loss'].item() - 1))
        r.update({f'grad_rel_{k}': rel(v, b['grads'][k]) for k, v in a['grads'].items()})
        rows.append(r)
    torch.manual_seed(0)                                                   # fused vs autograd on CUDA (the tests' setup)
    small = JumpReLUSAE(256, 2048, bandwidth=0.04, device=dev)
    x = torch.randn(512, 256, device=dev) / 5
    with torch.no_grad():
        small.b_dec.normal_(0, 0.1)
        small.b_enc.normal_(0, 0.05)
        small.theta.uniform_(0.0, 0.08)
    cfg = TrainConfig(d_sae=2048, target_l0=30.0, batch_size=512, n_tokens=512)
    with torch.enable_grad():
        loss, _ = reference_loss(small, x, cfg, coeff=0.3)
        ref = torch.autograd.grad(loss, list(small.parameters()))
    out = fused_grads(small, x, cfg, 0.3)
    auto = dict(loss_rel=abs(out['loss'].item() / loss.item() - 1),
                **{f'grad_rel_{k}': rel(r, out['grads'][k]) for (k, _), r in zip(small.named_parameters(), ref)})
    return rows, auto


def training_equivalence(dev):
    "Ten steps on CUDA through the dense and the sparse step end at the same parameters"
    from salmon.synthetic import SparseDictionary
    data = SparseDictionary(d=64, n_features=256, l0=4, batch_tokens=512, n_batches=10, seed=2)
    base = TrainConfig.preset('paper', d_sae=1024, batch_size=512, n_tokens=5120, lr=1e-3, lr_warmup_steps=0,
                              sparsity_warmup_steps=0, bandwidth=0.01, theta0=0.05, target_l0=6.0)
    res = {}
    for mode in ('off', 'on'):
        (sae, hist), = train_saes([TrainConfig(**{**base.__dict__, 'sparse': mode})], data, progress=False, norm_factor=1.0,
                                  log_every=5, device=dev)
        res[mode] = (sae, hist)
    a, b = res['off'][0], res['on'][0]
    return dict(device=str(a.W_enc.device), sparse_frac_on=list(res['on'][1].sparse_frac),
                sparse_frac_off=list(res['off'][1].sparse_frac),
                **{f'max_rel_{k}': ((getattr(a, k) - getattr(b, k)).abs().max() / getattr(a, k).abs().max()).item()
                   for k in ('W_enc', 'W_dec', 'b_enc', 'b_dec', 'theta')})


def timed(fn, dev, reps):
    fn()
    torch.cuda.synchronize(dev)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(dev)
        best = min(best, time.perf_counter() - t0)
    return best


def speed(dev, shapes, l0s, B, reps):
    "Seconds per gradient computation, dense vs sparse, by shape and L0 (the 'auto' crossover's evidence)"
    rows = []
    for d, F in shapes:
        for l0 in l0s:
            sae, x = sae_at_l0(d, F, l0, B, dev)
            r = dict(d=d, F=F, B=B, target=l0)
            for mode in ('off', 'on'):
                cfg = TrainConfig(d_sae=F, target_l0=float(l0), batch_size=B, n_tokens=B, sparse=mode)
                out = train_grads(sae, x, cfg, 0.3)
                r['density'] = (out['l0'].item() + out['n_window'] / B) / F
                r[f'{mode}_s'] = timed(lambda: train_grads(sae, x, cfg, 0.3), dev, reps)
            r['dense_over_sparse'] = r['off_s'] / r['on_s']
            rows.append(r)
            del sae, x
            torch.cuda.empty_cache()
    return rows


def tiny_pipeline(out, sources=False):
    "The tiny preset on CUDA: every stage on its own (one failing does not hide the next), then `run` for the tables"
    import salmon.pipeline as pl
    from dataclasses import replace
    p, out, res = pl.get_preset('tiny'), Path(out), {}
    if sources:                                     # streamed from the six-source hub mirror, by-source tables (tests/test_sources.py)
        from salmon.data import write_hub_fixtures
        hub = write_hub_fixtures(out/'hub', n_per_source=24)
        paper = pl.get_preset('gemma-2-2b')
        p = replace(p, name='tiny-sources', source=paper.source, mix_seed=paper.mix_seed, stream=True, hub_root=str(hub),
                    families=('domain',), train_tokens=256 * 24, probe_tokens=2_000, eval_texts=100, eval_max_len=64,
                    eval_per_source=64)
    d = pl.preset_dir(p, out)
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    res['caches'] = pl.stage_caches(p, d, progress=False) is not None
    saes = pl.stage_saes(p, d, progress=False)
    res['saes'] = sorted(saes) if hasattr(saes, 'keys') else str(type(saes))
    names = ('eval', 'sources', 'by_source', 'darkmatter', 'specificity', 'absorption')
    for name in [n for n in names if p.eval_per_source or n not in ('sources', 'by_source')]:
        try:
            fn = getattr(pl, f'stage_{name}')
            fn(p, d, saes, progress=False) if name in ('eval', 'sources', 'by_source') else fn(p, d, saes)
            res[name] = 'ok'
        except Exception as e: res[name] = dict(error=f'{type(e).__name__}: {e}', traceback=traceback.format_exc()[-2500:])
    try:
        pl.run(p, out, progress=False, verbose=False)
        res['run'] = 'ok'
    except Exception as e: res['run'] = dict(error=f'{type(e).__name__}: {e}', traceback=traceback.format_exc()[-2500:])
    csv = d/'comparison.csv'
    res.update(seconds=time.time() - t0, comparison=csv.read_text() if csv.exists() else None)
    return res


def gemmascope_cuda(out, dev):
    "A GemmaScope file in the hub layout loaded onto CUDA and scored on CPU activations (the evaluation's mix of devices)"
    from salmon.gemmascope import write_gemmascope_mirror, load_gemmascope
    from salmon.metrics import reconstruction_metrics
    t0 = time.time()
    write_gemmascope_mirror(out/'gs', 'gemma-2-2b', widths=['16k'], l0s={'16k': [22]})
    t_write = time.time() - t0
    sae = load_gemmascope('gemma-2-2b', 20, '16k', 22, local_dir=out/'gs', device=dev)
    x = torch.randn(4096, 2304) * 3
    r = reconstruction_metrics(sae, x)
    return dict(write_s=t_write, device=str(sae.W_enc.device), theta_dtype=str(sae.theta.dtype), l0=r['l0'], fve=r['fve'])


def main():
    p = argparse.ArgumentParser()
    p.add_argument('--out', required=True)
    p.add_argument('--quick', action='store_true', help='small shapes (a CPU trial of this script)')
    p.add_argument('--only', default=None, help='comma-separated steps to run (default: all)')
    a = p.parse_args()
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    res = dict(torch=torch.__version__, device=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu',
               started=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()))
    if dev.type == 'cpu':
        torch.cuda.synchronize = lambda *_: None                        # a CPU trial of this script only
    big = [(2304, 16384), (2304, 65536)] if not a.quick else [(64, 512)]
    B = 2048 if not a.quick else 256
    steps = [('correctness', lambda: correctness(dev, *big[0], B, (20, 100) if not a.quick else (8,))),
             ('training_equivalence', lambda: training_equivalence(dev)),
             ('speed', lambda: speed(dev, big, (20, 50, 100, 300) if not a.quick else (8,), B, 5 if not a.quick else 1)),
             ('tiny_pipeline', lambda: tiny_pipeline(Path(a.out)/'tiny-run')),
             ('tiny_sources', lambda: tiny_pipeline(Path(a.out)/'tiny-sources', sources=True)),
             ('gemmascope_cuda', lambda: gemmascope_cuda(Path('/tmp/salmon-gs'), dev))]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    for name, fn in [(n, f) for n, f in steps if a.only is None or n in a.only.split(',')]:
        t0 = time.time()
        try: res[name] = fn()
        except Exception as e: res[name] = dict(error=f'{type(e).__name__}: {e}', traceback=traceback.format_exc())
        print(f'{name}: {time.time() - t0:.1f}s', json.dumps(res[name], default=str)[:3000], flush=True)
        Path(a.out, 'gpu_check.json').write_text(json.dumps(res, indent=1, default=str))


if __name__ == '__main__': main()
