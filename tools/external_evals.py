"""Run SAELens' and SAEBench's own evaluation code on the SAE, model and tokens that `python -m salmon.compare prepare` wrote.

Runs in a separate environment where `sae-bench==0.6.0` and `transformer-lens` are installed as they install themselves
(`make compare` creates it under .cache/compare-venv); salmon is not imported here. Writes `external.json` next to the inputs.
"""
import json, sys, time
from pathlib import Path

import torch
from safetensors.torch import load_file


class TokenStore:
    "The parts of an ActivationsStore that the core evals use: fixed token batches, in order, rewindable"
    def __init__(self, tokens: torch.Tensor, batch_size: int):
        self.tokens, self.i, self.context_size, self.store_batch_size_prompts = tokens, 0, tokens.shape[1], batch_size
    def get_batch_tokens(self, n=None):
        n = n or self.store_batch_size_prompts
        b = self.tokens[self.i:self.i + n]; self.i += n
        if len(b) < n: raise RuntimeError('ran out of tokens')
        return b
    def reset_input_dataset(self): self.i = 0


def load_tl(model_dir: str, hf_name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens import HookedTransformer
    tok = AutoTokenizer.from_pretrained(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    tl = HookedTransformer.from_pretrained_no_processing(hf_name, hf_model=hf, tokenizer=tok, device='cpu', dtype=torch.float32)
    tl.eval()
    return tl, tok


def saelens_core(tl, sae_dir, tokens, bs):
    from sae_lens import SAE
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler
    sae = SAE.load_from_disk(sae_dir, device='cpu')
    n = len(tokens) // bs
    cfg = EvalConfig(batch_size_prompts=bs, n_eval_reconstruction_batches=n, n_eval_sparsity_variance_batches=n, compute_kl=True,
                     compute_ce_loss=True, compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True)
    m, _ = run_evals(sae, TokenStore(tokens, bs), tl, ActivationScaler(), cfg, exclude_special_tokens=True)
    return {k: v for g in m.values() if isinstance(g, dict) for k, v in g.items()}


def saebench_sae(sae_dir, layer, model_name):
    from sae_bench.custom_saes.jumprelu_sae import JumpReluSAE
    w = load_file(str(Path(sae_dir)/'sae_weights.safetensors'))
    sae = JumpReluSAE(w['W_enc'].shape[0], w['W_enc'].shape[1], model_name, layer, torch.device('cpu'), torch.float32)
    sae.load_state_dict({k: w[k].float() for k in ('W_enc', 'W_dec', 'b_enc', 'b_dec', 'threshold')})
    return sae


def saebench_core(tl, sae, tokens, bs, exclude_special):
    from sae_bench.evals.core.eval_config import CoreEvalConfig
    from sae_bench.evals.core.main import run_evals
    n = len(tokens) // bs
    cfg = CoreEvalConfig(batch_size_prompts=bs, n_eval_reconstruction_batches=n, n_eval_sparsity_variance_batches=n, compute_kl=True,
                         compute_ce_loss=True, compute_l2_norms=True, compute_sparsity_metrics=True, compute_variance_metrics=True,
                         exclude_special_tokens_from_reconstruction=exclude_special)
    tk = tl.tokenizer   # as sae_bench.evals.core.main.multiple_evals passes them
    m, _ = run_evals(sae, TokenStore(tokens, bs), tl, cfg, ignore_tokens={tk.pad_token_id, tk.eos_token_id, tk.bos_token_id})
    return {k: v for g in m.values() if isinstance(g, dict) for k, v in g.items()}


def main(work: str):
    work = Path(work); inp = json.loads((work/'inputs.json').read_text())
    torch.manual_seed(0); torch.set_grad_enabled(False)
    t0 = time.time()
    tl, tok = load_tl(inp['model_dir'], inp['tl_name'])
    print(f'TransformerLens model loaded in {time.time() - t0:.0f}s', flush=True)
    out = dict(versions={}, seconds={})
    for p in ('sae_lens', 'sae_bench', 'transformer_lens', 'torch', 'transformers'):
        try:
            from importlib.metadata import version
            out['versions'][p] = version(p.replace('_', '-'))
        except Exception as e: out['versions'][p] = f'unknown ({e})'
    sae_dir = str(work/'sae'); sb = saebench_sae(sae_dir, inp['layer'], inp['tl_name'])
    if inp.get('core', True):
        bs = inp['batch_size']; tokens = load_file(str(work/'tokens.safetensors'))['tokens'].long()
        t = time.time(); out['saelens'] = saelens_core(tl, sae_dir, tokens, bs); out['seconds']['saelens'] = time.time() - t
        print(f"SAELens run_evals: {out['seconds']['saelens']:.0f}s", flush=True)
        t = time.time(); out['saebench'] = saebench_core(tl, sb, tokens, bs, False); out['seconds']['saebench'] = time.time() - t
        print(f"SAEBench core: {out['seconds']['saebench']:.0f}s", flush=True)
        if inp.get('saebench_exclude_special', True):
            t = time.time(); out['saebench_exclude_special'] = saebench_core(tl, sb, tokens, bs, True)
            out['seconds']['saebench_exclude_special'] = time.time() - t
    if inp.get('absorption'):
        from absorption_external import saebench_absorption
        t = time.time(); out['absorption'] = saebench_absorption(tl, sb, work, inp); out['seconds']['absorption'] = time.time() - t
        print(f"SAEBench absorption: {out['seconds']['absorption']:.0f}s", flush=True)
    out['seconds']['total'] = time.time() - t0
    plain = lambda o: o.item() if hasattr(o, 'item') else str(o)   # numpy scalars in SAEBench's outputs
    (work/'external.json').write_text(json.dumps(out, indent=1, default=plain))
    print(json.dumps({k: out[k] for k in ('saelens', 'saebench', 'seconds') if k in out}, indent=1, default=plain))


if __name__ == '__main__': main(sys.argv[1])
