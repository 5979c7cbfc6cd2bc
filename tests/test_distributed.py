"""Two gloo processes on CPU against one: DDP gives the single-process SAEs over the same global batches (to 1e-5 relative),
sweep-parallel gives them exactly, and a run whose rank is killed mid-training resumes to exactly the uninterrupted result.
Every launch has a deadline (`salmon.distributed.launch` kills what is left after it), so no test can hang."""
import os, signal
import pytest
import torch
from salmon.distributed import launch, rank_rows, world
from salmon.trace import ActivationBuffer
from salmon.train import TrainConfig, train_saes

D, F, B, STEPS = 32, 64, 128, 12          # activation width, latents, global batch, steps
LAUNCH = dict(timeout=180, dist_timeout=30)

def configs():
    "Two SAEs: the paper's recipe (its penalty needs the global batch's L0) and GemmaScope's (pre-encoder bias)"
    kw = dict(d_sae=F, batch_size=B, n_tokens=B * STEPS, lr=3e-3, lr_warmup_steps=2, sparsity_warmup_steps=4)
    return [TrainConfig.preset('paper', target_l0=6.0, name='paper', **kw),
            TrainConfig.preset('gemmascope', sparsity_coeff=3e-3, name='gemmascope', **kw)]

def chunk(i:int, rows:int=B)->torch.Tensor:
    "Chunk `i` of a seeded sparse-code stream in D dimensions"
    g = torch.Generator().manual_seed(1000 + i)
    dic = torch.randn(96, D, generator=torch.Generator().manual_seed(0))
    codes = (torch.rand(rows, 96, generator=g) < 0.04) * torch.rand(rows, 96, generator=g) * 3
    return codes @ dic + 0.05 * torch.randn(rows, D, generator=g)

def global_batches(n:int=STEPS + 2)->list:
    return [chunk(i) for i in range(n)]

def params(results)->list[dict]:
    return [{k: v.detach().clone() for k, v in sae.state_dict().items()} for sae, _ in results]

def single(cfgs=None)->list[dict]:
    "The reference: one process, one thread, the global batches"
    n = torch.get_num_threads(); torch.set_num_threads(1)
    try: return params(train_saes(cfgs or configs(), global_batches(), device='cpu', progress=False, norm_tokens=2 * B))
    finally: torch.set_num_threads(n)

def ddp_worker()->list[dict]:
    return params(train_saes(configs(), rank_rows(global_batches()), device='cpu', progress=False, norm_tokens=2 * B))

def sweep_worker(out:str)->list[dict]:
    cfgs = configs() + [TrainConfig.preset('paper', target_l0=12.0, name='paper12', d_sae=F, batch_size=B, n_tokens=B * STEPS, lr=3e-3)]
    return params(train_saes(cfgs, global_batches(), parallel='sweep', out_dir=out, device='cpu', progress=False, norm_tokens=2 * B))

class Chunks:
    "A resumable source of this rank's chunks (it stands for an `ActivationStream` over the rank's shard of texts)"
    def __init__(self, rank:int, n:int): self.rank, self.n, self.pos = rank, n, 0
    def __iter__(self):
        while self.pos < self.n:
            self.pos += 1; yield chunk(100 * (self.rank + 1) + self.pos, 96)
    def state_dict(self): return dict(pos=self.pos)
    def load_state_dict(self, s): self.pos = s['pos']

class Dying:
    "The rank's buffer, killing its own process (SIGKILL: no clean-up) when batch `at` is asked for"
    resumable = True
    def __init__(self, buf, at): self.buf, self.at = buf, at
    def state_dict(self): return self.buf.state_dict()
    def load_state_dict(self, s): self.buf.load_state_dict(s)
    def __iter__(self):
        for i, b in enumerate(self.buf):
            if i == self.at: os.kill(os.getpid(), signal.SIGKILL)
            yield b

def streamed_worker(out:str, die_at:int|None)->list[dict]:
    "DDP from each rank's own shuffled stream (checkpointing every rank's position), resuming from `out`"
    rank, n = world()
    src = ActivationBuffer(Chunks(rank, 40), capacity=512, batch_tokens=B // n, seed=rank)
    if die_at is not None and rank == 1: src = Dying(src, die_at)
    return params(train_saes(configs(), src, out_dir=out, resume=True, ckpt_every=4, device='cpu', progress=False, norm_tokens=2 * B))

def rel(a:torch.Tensor, b:torch.Tensor)->float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))

def test_ddp_equals_single_process():
    ref, got = single(), launch(ddp_worker, 2, **LAUNCH)
    assert got[0].__len__() == 2
    for r in got:                                   # both ranks hold the same SAEs
        for a, b in zip(r, ref):
            for k in b: assert rel(a[k], b[k]) < 1e-5, (k, rel(a[k], b[k]))
    assert all(torch.equal(got[0][i][k], got[1][i][k]) for i in range(2) for k in got[0][i])

def test_sweep_parallel_is_exact(tmp_path):
    cfgs = configs() + [TrainConfig.preset('paper', target_l0=12.0, name='paper12', d_sae=F, batch_size=B, n_tokens=B * STEPS, lr=3e-3)]
    ref, got = single(cfgs), launch(sweep_worker, 2, str(tmp_path), **LAUNCH)
    for r in got:
        assert len(r) == 3
        for a, b in zip(r, ref): assert all(torch.equal(a[k], b[k]) for k in b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['gemmascope', 'paper', 'paper12']   # rank 0 wrote all three

def test_killed_rank_stops_the_job_and_a_rerun_resumes(tmp_path):
    whole = launch(streamed_worker, 2, str(tmp_path/'whole'), None, **LAUNCH)
    rep = launch(streamed_worker, 2, str(tmp_path/'killed'), 9, check=False, **LAUNCH)
    assert rep[1]['exitcode'] == -signal.SIGKILL
    assert rep[0]['exitcode'] == 1 and rep[0]['error'], rep[0]          # the survivor stopped by itself, with an error
    assert sorted(p.name for p in (tmp_path/'killed'/'checkpoints').iterdir() if p.name.startswith('step_'))   # rank 0's checkpoint
    again = launch(streamed_worker, 2, str(tmp_path/'killed'), None, **LAUNCH)
    for a, b in zip(again[0], whole[0]): assert all(torch.equal(a[k], b[k]) for k in b)
    assert not (tmp_path/'killed'/'checkpoints').exists()                # finished: rank 0 removed them

def test_device_map_dispatch_on_cpu(tmp_path):
    """A model split by `device_map` (accelerate's dispatch, as across a node's GPUs) traces the same activations with nnsight.
    torch has one CPU device ('cpu:1' is 'cpu'; transformers 5.23 fails to load a map naming 'cpu:1' with a TypeError), so a map
    cannot name two CPUs: the CPU stand-in for a second device is 'disk',
    whose layers sit on the meta device and are loaded by accelerate's `AlignDevicesHook` at each forward."""
    from salmon.models import load_lm, tiny_lm
    from salmon.trace import ActivationStream
    lm = tiny_lm(save_to=tmp_path/'tiny')
    texts = ['The patient has a fever and a cough.', 'Aspirin inhibits platelet aggregation in the blood.', 'Hello.']
    dm = {'model.embed_tokens': 'cpu', 'model.rotary_emb': 'cpu', 'model.layers.0': 'cpu', 'model.layers.1': 'disk',
          'model.layers.2': 'disk', 'model.layers.3': 'cpu', 'model.norm': 'cpu', 'lm_head': 'cpu'}
    split = load_lm(tmp_path/'tiny', device='cpu', device_map=dm, offload_folder=str(tmp_path/'offload'))
    layer = split._module.model.layers[1]
    assert type(layer._hf_hook).__name__ == 'AlignDevicesHook' and layer.self_attn.q_proj.weight.device.type == 'meta'
    ref = torch.cat(list(ActivationStream(lm, texts, 2, progress=False)))
    got = torch.cat(list(ActivationStream(split, texts, 2, progress=False)))
    assert got.shape == ref.shape and torch.equal(got, ref)

def test_bad_inputs(monkeypatch):
    from salmon.distributed import init_distributed, my_share, shard
    with pytest.raises(ValueError, match="parallel='both'"): train_saes(configs(), global_batches(2), parallel='both', progress=False)
    with pytest.raises(ValueError, match='rank=2'): list(shard(['a', 'b'], 2, 2))
    with pytest.raises(ValueError, match='leaves 1 idle'): my_share(1, 0, 2)
    with pytest.raises(ValueError, match='multiple of the number of processes'): next(rank_rows([torch.zeros(5, 2)], 0, 2))
    with pytest.raises(ValueError, match="backend='mpi'"): init_distributed('mpi')
    for k in ('RANK', 'MASTER_ADDR', 'MASTER_PORT'): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv('WORLD_SIZE', '2')
    with pytest.raises(RuntimeError, match='launch with torchrun'): init_distributed()
    with pytest.raises(RuntimeError, match='no process group is up'): train_saes(configs(), global_batches(2), progress=False)

def uneven_worker()->list:
    "Rank 1's shard runs out first: every rank must stop at the same step (no rank left waiting in an all-reduce)"
    rank, n = world()
    src = ActivationBuffer(Chunks(rank, 40 if rank == 0 else 6), capacity=512, batch_tokens=B // n, seed=rank)
    res = train_saes(configs(), src, device='cpu', progress=False, norm_tokens=2 * B)
    return [sae.cfg['n_tokens_trained'] for sae, _ in res] + [params(res)]

def test_uneven_shards_stop_together():
    a, b = launch(uneven_worker, 2, **LAUNCH)
    assert a[:2] == b[:2] and 0 < a[0] < B * STEPS, (a[:2], b[:2])
    assert all(torch.equal(a[2][i][k], b[2][i][k]) for i in range(2) for k in a[2][i])
