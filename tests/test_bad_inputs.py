"""Bad input, one case per row: every public entry point (API and command line) must fail at once with the right exception,
and the message must name the offending argument (or the file, and the line for text formats). None may succeed silently.

Each case is `(id, make, exception, needle)`: `make(d)` sets up what it needs in the temporary folder `d` and returns the call
that must fail; `needle` (with `{d}` replaced by that folder) must appear in the message."""
import functools, json, math, os, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
import numpy as np
import pytest
import torch
from salmon import store
from salmon.core import check_choice, check_int, check_path, check_range
from salmon.store import CorruptArtefactError, StaleArtefactError
from salmon.sae import JumpReLUSAE, load_gemmascope_npz, load_sae, save_gemmascope_npz, save_sae
from salmon.train import TrainConfig, train_saes
from salmon.trace import ActivationBuffer, ActivationCache, cache_activations, trace_activations
from salmon.data import general_text, load_records, medical_qa
from salmon.metrics import evaluate, reconstruction_metrics
from salmon.autointerp import OpenAIClient, make_client
from salmon.pipeline import Preset, get_preset, gpu_estimate, run, stage_caches
from salmon.synthetic import SparseDictionary
from salmon.__main__ import main, parse_args

NAN = float('nan')


@functools.lru_cache(maxsize=1)
def lm():
    from salmon.models import tiny_lm
    return tiny_lm()


def stream(d=16, n=4, B=64):
    return SparseDictionary(d=d, n_features=32, l0=3, batch_tokens=B, n_batches=n, seed=0)


def cfg(**kw): return TrainConfig(**{**dict(d_sae=32, batch_size=64, n_tokens=64 * 4, target_l0=3.0), **kw})


def preset(**kw):
    import dataclasses
    return dataclasses.replace(get_preset('tiny'), **kw)


def write(d, name, text):
    p = Path(d)/name; p.parent.mkdir(parents=True, exist_ok=True)
    (p.write_bytes if isinstance(text, bytes) else p.write_text)(text)
    return p


def small_cache(d):
    "A finished two-shard cache on the tiny model"
    return cache_activations(lm(), ['one two three four five six', 'seven eight nine ten'] * 4, 1, Path(d)/'c', shard_tokens=20,
                             batch_size=2, max_len=16, progress=False, provenance=dict(texts=8))


def damaged_shard(d, how):
    c = small_cache(d); f = c.path/c.manifest['shards'][0]['file']
    f.write_bytes(f.read_bytes()[:-7] if how == 'cut' else bytes(f.stat().st_size))
    return lambda: c.read_all()


def saved_sae(d, how):
    sae = JumpReLUSAE(8, 16); p = save_sae(sae, Path(d)/'sae'); f = p/'sae.safetensors'
    if how == 'cut': f.write_bytes(f.read_bytes()[:-5])
    elif how == 'zero': f.write_bytes(bytes(f.stat().st_size))
    elif how == 'config': (p/'config.json').write_text('{"format": "salmon.sae",\n "d_model": 8,,\n}')
    return lambda: load_sae(p)


def nan_npz(d):
    sae = JumpReLUSAE(8, 16)
    with torch.no_grad(): sae.theta[3] = NAN
    f = save_gemmascope_npz(sae, Path(d)/'params.npz')
    return lambda: load_gemmascope_npz(f)


def resume_wider(d):
    "Checkpoint written on d=16 activations, resumed on d=8 ones"
    c = cfg(n_tokens=64 * 8)
    def dying(src):
        for i, b in enumerate(src):
            if i == 5: raise KeyboardInterrupt
            yield b
    try: train_saes([c], dying(stream(16, 8)), out_dir=Path(d)/'run', ckpt_every=2, progress=False, norm_tokens=64)
    except KeyboardInterrupt: pass
    return lambda: train_saes([c], stream(8, 8), out_dir=Path(d)/'run', resume=True, progress=False, norm_tokens=64)


def legacy_results(d):
    "A results folder made before provenance records: a cache manifest without a fingerprint"
    man = dict(model='tiny', layer=2, corpus='medical', split='train', bos='drop', max_len=128, dtype='float16', d_model=64,
               n_tokens=10, n_texts=1, n_truncated=0, seconds=0.1, shards=[], complete=True)
    write(d, 'res/tiny/cache/medical-train/manifest.json', json.dumps(man))
    return Path(d)/'res'


def nonfinite_batches(): yield torch.full((64, 16), NAN)


CASES = [
    # core checks
    ('check_range-nan', lambda d: lambda: check_range('theta0', NAN, 0.0), ValueError, 'theta0=nan is not a finite number'),
    ('check_range-inf', lambda d: lambda: check_range('lr', math.inf, 0.0), ValueError, 'lr=inf is not a finite number'),
    ('check_range-str', lambda d: lambda: check_range('lr', '1e-3', 0.0), TypeError, "lr='1e-3' is str; expected a number"),
    ('check_int-float', lambda d: lambda: check_int('layer', 1.5, 0), TypeError, 'layer=1.5 is float; expected an int'),
    ('check_int-bool', lambda d: lambda: check_int('log_every', True, 1), TypeError, 'log_every=True is bool'),
    ('check_path-empty', lambda d: lambda: check_path('out', ''), ValueError, "out='' is empty"),
    ('check_path-missing', lambda d: lambda: check_path('path', Path(d)/'nope', exists=True), FileNotFoundError, "path='{d}/nope' does not exist"),
    ('check_path-file-as-dir', lambda d: lambda: check_path('out', write(d, 'f.txt', 'x'), kind='dir'), NotADirectoryError, "out='{d}/f.txt' is a file"),
    ('check_choice', lambda d: lambda: check_choice('bos', 'first', {'drop', 'keep'}), ValueError, "bos='first' is not valid"),
    # store: files name themselves (and the line)
    ('read_json-broken', lambda d: lambda: store.read_json(write(d, 'm.json', '{\n "a": 1,\n}')), ValueError, '{d}/m.json:3:1: invalid JSON'),
    ('read_json-missing', lambda d: lambda: store.read_json(Path(d)/'none.json'), FileNotFoundError, "'{d}/none.json' does not exist"),
    ('read_json-binary', lambda d: lambda: store.read_json(write(d, 'b.json', b'\xff\xfe{}')), ValueError, '{d}/b.json: JSON file is not UTF-8'),
    ('iter_jsonl-bad-line', lambda d: lambda: list(store.iter_jsonl(write(d, 'c.jsonl', '{"text": "a"}\n{"text": "b"}\n{"text": \n'))),
     ValueError, '{d}/c.jsonl:3:'),
    ('iter_jsonl-not-object', lambda d: lambda: list(store.iter_jsonl(write(d, 'c.jsonl', '{"text": "a"}\n["b"]\n'))), ValueError,
     '{d}/c.jsonl:2: JSONL file line holds a list; expected a JSON object'),
    ('iter_jsonl-not-utf8', lambda d: lambda: list(store.iter_jsonl(write(d, 'c.jsonl', b'{"text": "a"}\n\xff\n'))), ValueError, '{d}/c.jsonl:2:'),
    ('resolve-on_stale', lambda d: lambda: store.resolve(store.Status('ok', Path(d)), 'ignore'), ValueError, "on_stale='ignore' is not valid"),
    ('verify_file-cut', lambda d: lambda: store.verify_file(write(d, 'x.bin', b'abc'), store.file_record(b'abcd'), 'shard'), CorruptArtefactError,
     "shard '{d}/x.bin' is damaged: 3 bytes, 4 were written"),
    ('read_verified-zeroed', lambda d: lambda: store.read_verified(write(d, 'x.bin', b'\0\0\0\0'), store.file_record(b'abcd'), 'shard'),
     CorruptArtefactError, "shard '{d}/x.bin' is damaged: its content differs"),
    ('read_verified-missing', lambda d: lambda: store.read_verified(Path(d)/'gone.bin', store.file_record(b'ab'), 'shard'), CorruptArtefactError,
     "shard '{d}/gone.bin' is missing"),
    # TrainConfig
    ('cfg-theta0-nan', lambda d: lambda: cfg(theta0=NAN), ValueError, 'theta0=nan'),
    ('cfg-target_l0-nan', lambda d: lambda: cfg(target_l0=NAN), ValueError, 'target_l0=nan'),
    ('cfg-target_l0-neg', lambda d: lambda: cfg(target_l0=-1.0), ValueError, 'target_l0=-1.0'),
    ('cfg-lr-nan', lambda d: lambda: cfg(lr=NAN), ValueError, 'lr=nan'),
    ('cfg-lr-neg', lambda d: lambda: cfg(lr=-1e-3), ValueError, 'lr=-0.001 is out of range'),
    ('cfg-lr-str', lambda d: lambda: cfg(lr='3e-4'), TypeError, "lr='3e-4' is str"),
    ('cfg-d_sae-0', lambda d: lambda: cfg(d_sae=0), ValueError, 'd_sae=0 is out of range'),
    ('cfg-d_sae-float', lambda d: lambda: cfg(d_sae=16.5), TypeError, 'd_sae=16.5 is float; expected an int'),
    ('cfg-batch_size-0', lambda d: lambda: cfg(batch_size=0), ValueError, 'batch_size=0'),
    ('cfg-n_tokens-small', lambda d: lambda: cfg(n_tokens=10), ValueError, 'n_tokens=10 is out of range'),
    ('cfg-bandwidth-0', lambda d: lambda: cfg(bandwidth=0.0), ValueError, 'bandwidth=0.0'),
    ('cfg-bandwidth-inf', lambda d: lambda: cfg(bandwidth=math.inf), ValueError, 'bandwidth=inf'),
    ('cfg-penalty', lambda d: lambda: cfg(penalty='l1'), ValueError, "penalty='l1' is not valid"),
    ('cfg-lr_warmup', lambda d: lambda: cfg(lr_warmup='exp'), ValueError, "lr_warmup='exp'"),
    ('cfg-step_on', lambda d: lambda: cfg(step_on='mid'), ValueError, "step_on='mid'"),
    ('cfg-dtype', lambda d: lambda: cfg(dtype='int8'), ValueError, "dtype='int8'"),
    ('cfg-lr_decay_start-big', lambda d: lambda: cfg(lr_decay_start=1.5), ValueError, 'lr_decay_start=1.5'),
    ('cfg-lr_decay_start-nan', lambda d: lambda: cfg(lr_decay_start=NAN), ValueError, 'lr_decay_start=nan'),
    ('cfg-sparsity_coeff-neg', lambda d: lambda: cfg(sparsity_coeff=-1.0), ValueError, 'sparsity_coeff=-1.0'),
    ('cfg-sparsity_warmup-neg', lambda d: lambda: cfg(sparsity_warmup_steps=-1), ValueError, 'sparsity_warmup_steps=-1'),
    ('cfg-lr_warmup_steps-float', lambda d: lambda: cfg(lr_warmup_steps=2.5), TypeError, 'lr_warmup_steps=2.5'),
    ('cfg-betas-one', lambda d: lambda: cfg(betas=(0.9,)), ValueError, 'betas=(0.9,)'),
    ('cfg-betas-range', lambda d: lambda: cfg(betas=(0.9, 1.5)), ValueError, 'betas[1]=1.5'),
    ('cfg-grad_clip-0', lambda d: lambda: cfg(grad_clip=0.0), ValueError, 'grad_clip=0.0'),
    ('cfg-seed-float', lambda d: lambda: cfg(seed=1.5), TypeError, 'seed=1.5'),
    ('cfg-adam_eps-nan', lambda d: lambda: cfg(adam_eps=NAN), ValueError, 'adam_eps=nan'),
    ('cfg-preset-typo', lambda d: lambda: TrainConfig.preset('papr'), ValueError, "preset='papr' is not valid"),
    ('cfg-preset-field', lambda d: lambda: TrainConfig.preset('paper', learning_rate=1e-3), TypeError, "['learning_rate']"),
    # train_saes
    ('train-log_every-0', lambda d: lambda: train_saes([cfg()], stream(), log_every=0), ValueError, 'log_every=0 is out of range'),
    ('train-ckpt_every-0', lambda d: lambda: train_saes([cfg()], stream(), out_dir=Path(d)/'o', ckpt_every=0), ValueError, 'ckpt_every=0'),
    ('train-log_every-float', lambda d: lambda: train_saes([cfg()], stream(), log_every=2.5), TypeError, 'log_every=2.5'),
    ('train-norm_tokens-0', lambda d: lambda: train_saes([cfg()], stream(), norm_tokens=0), ValueError, 'norm_tokens=0'),
    ('train-dead_window-0', lambda d: lambda: train_saes([cfg()], stream(), dead_window=0), ValueError, 'dead_window=0'),
    ('train-max_steps-0', lambda d: lambda: train_saes([cfg()], stream(), max_steps=0), ValueError, 'max_steps=0'),
    ('train-keep_checkpoints-0', lambda d: lambda: train_saes([cfg()], stream(), keep_checkpoints=0), ValueError, 'keep_checkpoints=0'),
    ('train-norm_factor-nan', lambda d: lambda: train_saes([cfg()], stream(), norm_factor=NAN), ValueError, 'norm_factor=nan'),
    ('train-norm_factor-neg', lambda d: lambda: train_saes([cfg()], stream(), norm_factor=-2.0), ValueError, 'norm_factor=-2.0'),
    ('train-norm_factor-str', lambda d: lambda: train_saes([cfg()], stream(), norm_factor='mean'), ValueError, "norm_factor='mean'"),
    ('train-configs-empty', lambda d: lambda: train_saes([], stream()), ValueError, 'configs is empty'),
    ('train-configs-type', lambda d: lambda: train_saes([dict(d_sae=3)], stream()), TypeError, 'configs[0] is dict'),
    ('train-out_dir-empty', lambda d: lambda: train_saes([cfg()], stream(), out_dir=''), ValueError, "out_dir='' is empty"),
    ('train-out_dir-file', lambda d: lambda: train_saes([cfg()], stream(), out_dir=write(d, 'f', 'x')), NotADirectoryError, "out_dir='{d}/f' is a file"),
    ('train-resume-no-dir', lambda d: lambda: train_saes([cfg()], stream(), resume=True), ValueError, 'resume=True needs out_dir'),
    ('train-batch-mismatch', lambda d: lambda: train_saes([cfg(batch_size=32, n_tokens=128)], stream()), ValueError, 'batch_size=32'),
    ('train-resume-width', resume_wider, ValueError, "checkpoint '{d}/run/checkpoints/step_00000004' is for d_model=16; the stream has d=8"),
    ('train-nan-stream', lambda d: lambda: train_saes([cfg()], nonfinite_batches(), norm_factor=1.0), FloatingPointError, 'non-finite loss'),
    ('train-names-clash', lambda d: lambda: train_saes([cfg(), cfg()], stream()), ValueError, 'config names clash'),
    # tracing and caches
    ('trace-layer-float', lambda d: lambda: trace_activations(lm(), ['a b'], 1.5), TypeError, 'layer=1.5 is float; expected an int'),
    ('trace-layer-big', lambda d: lambda: trace_activations(lm(), ['a b'], 99), ValueError, 'layer=99 is out of range'),
    ('trace-layer-neg', lambda d: lambda: trace_activations(lm(), ['a b'], -1), ValueError, 'layer=-1 is out of range'),
    ('trace-max_len', lambda d: lambda: trace_activations(lm(), ['a b'], 1, max_len=1), ValueError, 'max_len=1'),
    ('trace-batch_size', lambda d: lambda: trace_activations(lm(), ['a b'], 1, batch_size=0), ValueError, 'batch_size=0'),
    ('trace-bos', lambda d: lambda: trace_activations(lm(), ['a b'], 1, bos='first'), ValueError, "bos='first'"),
    ('trace-texts-str', lambda d: lambda: trace_activations(lm(), 'one text', 1), TypeError, 'texts is a single str'),
    ('trace-texts-item', lambda d: lambda: trace_activations(lm(), ['a', 3], 1, progress=False).collect(), TypeError, 'texts[1] is int'),
    ('trace-empty', lambda d: lambda: trace_activations(lm(), [], 1, progress=False).collect(), ValueError, 'the corpus is empty'),
    ('cache-dtype-int8', lambda d: lambda: cache_activations(lm(), ['a b'], 1, Path(d)/'c', dtype=torch.int8), TypeError, 'dtype=torch.int8'),
    ('cache-dtype-str', lambda d: lambda: cache_activations(lm(), ['a b'], 1, Path(d)/'c', dtype='float16'), TypeError, "dtype='float16'"),
    ('cache-path-empty', lambda d: lambda: cache_activations(lm(), ['a b'], 1, ''), ValueError, "path='' is empty"),
    ('cache-path-file', lambda d: lambda: cache_activations(lm(), ['a b'], 1, write(d, 'f', 'x')), NotADirectoryError, "path='{d}/f' is a file"),
    ('cache-shard_tokens-0', lambda d: lambda: cache_activations(lm(), ['a b'], 1, Path(d)/'c', shard_tokens=0), ValueError, 'shard_tokens=0'),
    ('cache-texts-str', lambda d: lambda: cache_activations(lm(), 'a b', 1, Path(d)/'c'), TypeError, 'texts is a single str'),
    ('cache-stale', lambda d: (small_cache(d), lambda: cache_activations(lm(), ['x'], 1, Path(d)/'c', shard_tokens=20, batch_size=2, max_len=16,
                                                                           progress=False, provenance=dict(texts=6)))[1],
     StaleArtefactError, "activation cache '{d}/c' was made from other settings: texts 8 -> 6"),
    ('cache-layer-mismatch', lambda d: (small_cache(d), lambda: cache_activations(lm(), ['x'], 2, Path(d)/'c', shard_tokens=20, batch_size=2,
                                                                                   max_len=16, progress=False))[1],
     ValueError, 'layer is 1 in the cache, requested 2'),
    ('cachefile-missing', lambda d: lambda: ActivationCache(Path(d)/'none'), FileNotFoundError, "no activation cache at '{d}/none'"),
    ('cachefile-broken-manifest', lambda d: lambda: ActivationCache(write(d, 'c/manifest.json', '{"shards": [\n').parent), ValueError,
     '{d}/c/manifest.json:2:1: invalid JSON in activation-cache manifest'),
    ('cachefile-manifest-keys', lambda d: lambda: ActivationCache(write(d, 'c/manifest.json', '{"shards": []}').parent), CorruptArtefactError,
     "activation-cache manifest '{d}/c/manifest.json' lacks"),
    ('cachefile-shard-cut', lambda d: damaged_shard(d, 'cut'), CorruptArtefactError, "activation shard '{d}/c/shard_00000.safetensors' is damaged"),
    ('cachefile-shard-zeroed', lambda d: damaged_shard(d, 'zero'), CorruptArtefactError, "activation shard '{d}/c/shard_00000.safetensors' is damaged"),
    ('buffer-width-mismatch', lambda d: lambda: list(ActivationBuffer([torch.zeros(10, 16), torch.zeros(10, 8)], capacity=40, batch_tokens=4)),
     ValueError, 'with d=16 like the earlier ones'),
    ('buffer-1d-chunk', lambda d: lambda: list(ActivationBuffer([torch.zeros(10)], capacity=40, batch_tokens=4)), ValueError, 'expected 2-D chunks'),
    ('buffer-batch_tokens-0', lambda d: lambda: ActivationBuffer([], batch_tokens=0), ValueError, 'batch_tokens=0'),
    ('buffer-capacity-small', lambda d: lambda: ActivationBuffer([], capacity=10, batch_tokens=8), ValueError, 'capacity=10 is out of range'),
    ('buffer-seed-float', lambda d: lambda: ActivationBuffer([], capacity=40, batch_tokens=4, seed=0.5), TypeError, 'seed=0.5'),
    # SAE files
    ('sae-missing', lambda d: lambda: load_sae(Path(d)/'none'), FileNotFoundError, "'{d}/none' is not a salmon SAE folder"),
    ('sae-config-broken', lambda d: saved_sae(d, 'config'), ValueError, '{d}/sae/config.json:2:15: invalid JSON in salmon SAE config'),
    ('sae-weights-cut', lambda d: saved_sae(d, 'cut'), CorruptArtefactError, "SAE weights '{d}/sae/sae.safetensors' is damaged"),
    ('sae-weights-zeroed', lambda d: saved_sae(d, 'zero'), CorruptArtefactError, "SAE weights '{d}/sae/sae.safetensors' is damaged"),
    ('gemmascope-nan-threshold', nan_npz, ValueError, "{d}/params.npz: threshold holds 1 non-finite values"),
    ('gemmascope-missing', lambda d: lambda: load_gemmascope_npz(Path(d)/'params.npz'), FileNotFoundError, "'{d}/params.npz'"),
    ('sae-theta0-nan', lambda d: lambda: JumpReLUSAE(8, 16, theta0=NAN), ValueError, 'theta0=nan'),
    ('sae-d_sae-0', lambda d: lambda: JumpReLUSAE(8, 0), ValueError, 'd_sae=0'),
    # corpora
    ('records-local-no-suffix', lambda d: lambda: load_records(str(Path(d)/'corpus')), FileNotFoundError, "data file '{d}/corpus' does not exist"),
    ('records-relative-missing', lambda d: lambda: load_records('./my_corpus'), FileNotFoundError, "data file 'my_corpus' does not exist"),
    ('records-unknown-suffix', lambda d: lambda: load_records(write(d, 'corpus.xyz', '{}')), ValueError, "data file '{d}/corpus.xyz' has the suffix '.xyz'"),
    ('records-empty', lambda d: lambda: load_records(''), ValueError, "path_or_id=''"),
    ('medical-broken-line', lambda d: lambda: list(medical_qa('all', path=write(d, 'm.jsonl', '{"text": "a"}\n{"text": "b",}\n'))), ValueError,
     '{d}/m.jsonl:2:'),
    ('general-broken-line', lambda d: lambda: list(general_text('all', path=write(d, 'g.jsonl', '\n\n{"text": nope}\n'))), ValueError, '{d}/g.jsonl:3:'),
    ('medical-split', lambda d: lambda: list(medical_qa('dev')), ValueError, "split='dev'"),
    ('medical-source', lambda d: lambda: medical_qa(source='web'), ValueError, "source='web'"),
    ('medical-held_out-big', lambda d: lambda: list(medical_qa('test', held_out=1.5)), ValueError, 'held_out=1.5'),
    ('medical-held_out-nan', lambda d: lambda: list(medical_qa('test', held_out=NAN)), ValueError, 'held_out=nan'),
    # metrics
    ('metrics-nan-acts', lambda d: lambda: reconstruction_metrics(JumpReLUSAE(8, 16), torch.full((4, 8), NAN)), ValueError, '32 non-finite values'),
    ('metrics-3d-acts', lambda d: lambda: reconstruction_metrics(JumpReLUSAE(8, 16), torch.zeros(2, 4, 8)), ValueError, 'activations have shape'),
    ('evaluate-bos', lambda d: lambda: evaluate({}, lm(), ['a'], 1, bos='first'), ValueError, "bos='first'"),
    # pipeline presets and runs
    ('preset-name', lambda d: lambda: get_preset('tinyy'), ValueError, "preset='tinyy' is not valid"),
    ('preset-recipe', lambda d: lambda: preset(recipe='papr'), ValueError, "recipe='papr' is not valid"),
    ('preset-layer-float', lambda d: lambda: preset(layer=1.5), TypeError, 'layer=1.5'),
    ('preset-family', lambda d: lambda: preset(families=('domain', 'wide')), ValueError, "family='wide'"),
    ('preset-lr-nan', lambda d: lambda: preset(lr=NAN), ValueError, 'lr=nan'),
    ('preset-train_texts-0', lambda d: lambda: preset(train_texts=0), ValueError, 'train_texts=0'),
    ('preset-cache_dtype', lambda d: lambda: preset(cache_dtype='int8'), ValueError, "cache_dtype='int8'"),
    ('preset-eval_texts-0', lambda d: lambda: preset(eval_texts=0), ValueError, 'eval_texts=0'),
    ('preset-widths', lambda d: lambda: preset(widths=(0,)), ValueError, 'widths[]=0'),
    ('preset-target_l0s-nan', lambda d: lambda: preset(target_l0s=(NAN,)), ValueError, 'target_l0s[]=nan'),
    ('preset-source', lambda d: lambda: preset(source='web'), ValueError, "source='web'"),
    ('preset-train_tokens', lambda d: lambda: preset(train_tokens=10), ValueError, 'train_tokens=10'),
    ('preset-bos', lambda d: lambda: preset(bos='first'), ValueError, "bos='first'"),
    ('run-preset-type', lambda d: lambda: run(3, Path(d)), TypeError, 'preset=3 is int'),
    ('run-out-empty', lambda d: lambda: run('tiny', ''), ValueError, "out='' is empty"),
    ('run-out-file', lambda d: lambda: run('tiny', write(d, 'f', 'x')), NotADirectoryError, "out='{d}/f' is a file"),
    ('run-on_stale', lambda d: lambda: run('tiny', Path(d), on_stale='ignore'), ValueError, "on_stale='ignore'"),
    ('run-legacy-folder', lambda d: lambda: run('tiny', legacy_results(d), progress=False), StaleArtefactError,
     "'{d}/res/tiny/cache/medical-train' was made from other settings: it has no provenance record"),
    ('stage-legacy-says-how', lambda d: lambda: stage_caches(get_preset('tiny'), legacy_results(d)/'tiny', progress=False), StaleArtefactError,
     "rerun with on_stale='recompute' (command line: --on-stale recompute)"),
    ('gpu_estimate-gpu', lambda d: lambda: gpu_estimate('gemma-2-2b', 'V100'), ValueError, "gpu='V100'"),
    # OpenAI-compatible client
    ('client-http-remote', lambda d: lambda: OpenAIClient('http://api.example.com/v1', 'm'), ValueError, "base_url='http://api.example.com/v1' uses plain http"),
    ('client-no-scheme', lambda d: lambda: OpenAIClient('api.openai.com/v1', 'm'), ValueError, "base_url='api.openai.com/v1' is not an http(s) URL"),
    ('client-no-host', lambda d: lambda: OpenAIClient('https:///v1', 'm'), ValueError, "base_url='https:///v1' has no host"),
    ('client-model-empty', lambda d: lambda: OpenAIClient('https://api.openai.com/v1', ''), ValueError, "model=''"),
    ('client-temperature-nan', lambda d: lambda: OpenAIClient('https://api.openai.com/v1', 'm', temperature=NAN), ValueError, 'temperature=nan'),
    ('client-timeout-0', lambda d: lambda: OpenAIClient('https://api.openai.com/v1', 'm', timeout=0), ValueError, 'timeout=0'),
    ('client-token_param', lambda d: lambda: OpenAIClient('https://api.openai.com/v1', 'm', token_param='max'), ValueError, "token_param='max'"),
    ('client-api_key-type', lambda d: lambda: OpenAIClient('https://api.openai.com/v1', 'm', api_key=123), TypeError, 'api_key is int'),
    ('client-max_new_tokens', lambda d: lambda: OpenAIClient('http://127.0.0.1:9/v1', 'm').complete('x', 0), ValueError, 'max_new_tokens=0'),
    ('client-prompt-type', lambda d: lambda: OpenAIClient('http://127.0.0.1:9/v1', 'm').complete(None), TypeError, 'prompt is NoneType'),
    ('client-kind', lambda d: lambda: make_client('anthropic'), ValueError, "kind='anthropic'"),
]

CLI = [  # (id, argv, option named in the error)
    ('cli-preset', ['reproduce', '--preset', 'tinyy'], "--preset: invalid choice: 'tinyy'"),
    ('cli-out-empty', ['demo', '--out', ''], "--out: '' is empty"),
    ('cli-out-blank', ['reproduce', '--preset', 'tiny', '--out', '  '], "--out: '  ' is empty"),
    ('cli-out-file', ['demo', '--out', '{d}/f'], "--out: '{d}/f' is a file"),
    ('cli-on-stale', ['demo', '--on-stale', 'ignore'], "--on-stale: invalid choice: 'ignore'"),
    ('cli-no-command', [], 'the following arguments are required: cmd'),
    ('cli-unknown-command', ['train'], "invalid choice: 'train'"),
    ('cli-unknown-flag', ['demo', '--fast'], 'unrecognized arguments: --fast'),
    ('cli-preset-missing-value', ['reproduce', '--preset'], '--preset: expected one argument'),
    ('cli-out-missing-value', ['demo', '--out'], '--out: expected one argument'),
    ('cli-preset-on-demo', ['demo', '--preset', 'tiny'], 'unrecognized arguments: --preset tiny'),
]


def _check(exc_info, needle, d):
    msg = str(exc_info.value)
    assert needle.format(d=d) in msg, f'message does not name the problem:\n  {msg}\n  expected to contain: {needle.format(d=d)}'


@pytest.mark.parametrize('make,exc,needle', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_api_rejects(make, exc, needle, tmp_path):
    call = make(tmp_path)
    with pytest.raises(exc) as e: call()
    _check(e, needle, tmp_path)


@pytest.mark.parametrize('argv,needle', [c[1:] for c in CLI], ids=[c[0] for c in CLI])
def test_cli_rejects(argv, needle, tmp_path, capsys):
    (tmp_path/'f').write_text('x')
    with pytest.raises(SystemExit) as e: parse_args([a.format(d=tmp_path) for a in argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert needle.format(d=tmp_path) in err, err


def test_cli_legacy_folder_names_the_way_out(tmp_path):
    "`python -m salmon` on a results folder from before provenance records stops, naming the artefact and --on-stale"
    res = legacy_results(tmp_path)
    with pytest.raises(SystemExit) as e: main(['reproduce', '--preset', 'tiny', '--out', str(res), '--no-progress'])
    msg = str(e.value.code)
    assert msg.startswith('salmon: ') and f"'{res}/tiny/cache/medical-train'" in msg and '--on-stale recompute' in msg, msg


def test_case_count():
    assert len(CASES) + len(CLI) + 1 >= 100, len(CASES) + len(CLI) + 1


def test_long_text_warns():
    "A text longer than the model's context is traced with a warning naming max_len"
    with pytest.warns(UserWarning, match='longer than the model\'s context of 2048'):
        trace_activations(lm(), [' '.join(['word'] * 2200)], 1, max_len=4096, progress=False).collect()


# --- OpenAIClient: credentials never cross hosts; https off loopback; max_completion_tokens where wanted ---

class _Recorder(BaseHTTPRequestHandler):
    seen = []
    def _answer(self):
        n = int(self.headers.get('Content-Length') or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        type(self).seen.append((self.server.server_port, self.command, self.headers.get('Authorization'), body))
        target = getattr(self.server, 'redirect_to', None)
        if target:
            self.send_response(302); self.send_header('Location', target); self.end_headers(); return
        want = getattr(self.server, 'want', None)
        if want and body and want not in body:
            other = 'max_tokens' if want == 'max_completion_tokens' else 'max_completion_tokens'
            msg = json.dumps({'error': {'message': f"Unsupported parameter: '{other}' is not supported with this model. Use '{want}' instead."}})
            self.send_response(400); self.send_header('Content-Type', 'application/json'); self.end_headers(); self.wfile.write(msg.encode()); return
        out = json.dumps({'choices': [{'message': {'content': 'ok'}}]}).encode()
        self.send_response(200); self.send_header('Content-Type', 'application/json'); self.end_headers(); self.wfile.write(out)
    do_GET = do_POST = _answer
    def log_message(self, *a): pass


def _server(n, **attrs):
    srv = HTTPServer(('127.0.0.1', 0), _Recorder); srv.timeout = 10
    for k, v in attrs.items(): setattr(srv, k, v)
    th = threading.Thread(target=lambda: [srv.handle_request() for _ in range(n)], daemon=True); th.start()
    return srv, th


def test_client_drops_credentials_on_cross_host_redirect():
    _Recorder.seen = []
    dst, tdst = _server(1)
    src, tsrc = _server(1, redirect_to=f'http://localhost:{dst.server_port}/elsewhere')   # another origin (host and port)
    out = OpenAIClient(f'http://127.0.0.1:{src.server_port}/v1', 'm', api_key='secret', timeout=10).complete('hi', 5)
    tsrc.join(5); tdst.join(5); src.server_close(); dst.server_close()
    assert out == 'ok'
    (p1, _, auth1, _), (p2, _, auth2, _) = _Recorder.seen
    assert (p1, auth1) == (src.server_port, 'Bearer secret')
    assert (p2, auth2) == (dst.server_port, None), 'the Authorization header followed a redirect to another host'


def test_client_refuses_redirect_to_insecure_host():
    _Recorder.seen = []
    src, th = _server(1, redirect_to='http://example.com/v1/chat/completions')
    with pytest.raises(RuntimeError, match='refusing a redirect .* to insecure http://example.com'):
        OpenAIClient(f'http://127.0.0.1:{src.server_port}/v1', 'm', api_key='secret', timeout=10).complete('hi', 5)
    th.join(5); src.server_close()
    assert len(_Recorder.seen) == 1


@pytest.mark.parametrize('want', ['max_completion_tokens', 'max_tokens'])
def test_client_sends_the_token_parameter_the_server_wants(want):
    _Recorder.seen = []
    srv, th = _server(2, want=want)
    cl = OpenAIClient(f'http://127.0.0.1:{srv.server_port}/v1', 'm', timeout=10)
    assert cl.complete('hi', 7) == 'ok'
    th.join(5); srv.server_close()
    assert _Recorder.seen[-1][3][want] == 7 and cl.token_param == want
    assert OpenAIClient('https://api.openai.com/v1', 'gpt-5').token_param == 'max_completion_tokens'
