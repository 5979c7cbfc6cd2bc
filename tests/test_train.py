"Exhaustive checks of salmon.train: fused gradients vs autograd, synthetic recovery, exact resume, NaN stop, bf16 thresholds."
import json, time
import pandas as pd
import pytest
import torch
from salmon.sae import JumpReLUSAE, load_sae
from salmon.synthetic import SparseDictionary, recovery
import salmon.train
from salmon.train import TrainConfig, SAETrainer, fused_grads, sparse_grads, train_grads, reference_loss, train_saes, lr_at
from salmon.train import remove_parallel_


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('pre', [False, True])
@pytest.mark.parametrize('step_on', ['pre', 'post'])
@pytest.mark.parametrize('penalty', ['target_l0', 'l0'])
def test_fused_matches_autograd(seed, pre, step_on, penalty):
    torch.manual_seed(seed)
    sae = JumpReLUSAE(24, 96, bandwidth=0.04, pre_enc_bias=pre, step_on=step_on)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1); sae.b_enc.normal_(0, 0.05); sae.theta.uniform_(0.0, 0.08)
        sae.theta[:5] = 0.005                       # θ < ε/2: with step_on='post' inactive tokens fall in the window
    cfg = TrainConfig(d_sae=96, penalty=penalty, target_l0=12.0, batch_size=200, n_tokens=200)
    x = torch.randn(200, 24) / 5
    loss, parts = reference_loss(sae, x, cfg, coeff=0.3)
    ref = torch.autograd.grad(loss, list(sae.parameters()))
    out = fused_grads(sae, x, cfg, coeff=0.3)
    assert out['n_window'] > 0
    assert out['loss'].item() == pytest.approx(loss.item(), rel=1e-5)
    for (k, _), r in zip(sae.named_parameters(), ref):
        torch.testing.assert_close(out['grads'][k], r, rtol=1e-4, atol=1e-6, msg=k)


def test_synthetic_recovery():
    "≥ 90 % of the true features matched by a latent with decoder cosine ≥ 0.9 (speed is the benchmark's job, not a test's)"
    n = 2000
    data = SparseDictionary(d=64, n_features=128, l0=4, alpha=0.3, corr=0.3, batch_tokens=512, n_batches=n, seed=3)
    cfg = TrainConfig.preset('paper', d_sae=256, target_l0=5.0, batch_size=512, n_tokens=512 * n, lr=3e-3, lr_warmup_steps=100,
                             sparsity_warmup_steps=300, bandwidth=0.01, theta0=0.01, seed=3)
    (sae, hist), = train_saes([cfg], data, log_every=100, progress=False)
    rec = recovery(sae.W_dec, data.features)
    assert rec >= 0.9, f'recovered {rec:.1%}'
    assert abs(hist.l0.iloc[-1] - 5.0) < 0.5 and hist.fve.iloc[-1] > 0.85


def _stream(n=40):
    return SparseDictionary(d=16, n_features=32, l0=3, batch_tokens=128, n_batches=n, seed=7)


def test_resume_bit_exact_gemmascope_recipe(tmp_path):
    data = _stream()
    cfgs = [TrainConfig.preset('gemmascope', d_sae=48, batch_size=128, n_tokens=128 * 40, sparsity_coeff=c, lr=1e-3,
                               lr_warmup_steps=8, sparsity_warmup_steps=12, bandwidth=0.02, theta0=0.02) for c in (1e-3, 1e-2)]
    cfgs.append(TrainConfig.preset('paper_faithful', d_sae=64, batch_size=128, n_tokens=128 * 40, target_l0=4, lr=1e-3,
                                   lr_warmup_steps=8, sparsity_warmup_steps=12, bandwidth=0.02, theta0=0.02))
    kw = dict(log_every=4, ckpt_every=7, norm_tokens=300, progress=False, meta=dict(model='synthetic', layer=0))
    whole = train_saes(cfgs, data, out_dir=tmp_path / 'a', **kw)
    def dying(src, after):
        for i, b in enumerate(src):
            if i == after: raise KeyboardInterrupt
            yield b
    with pytest.raises(KeyboardInterrupt): train_saes(cfgs, dying(data, 30), out_dir=tmp_path / 'b', **kw)
    assert json.loads((tmp_path / 'b' / 'checkpoints' / 'step_00000028' / 'state.json').read_text())['step'] == 28
    resumed = train_saes(cfgs, data, out_dir=tmp_path / 'b', resume=True, **kw)
    for (a, ha), (b, hb) in zip(whole, resumed):
        for k in ('W_enc', 'W_dec', 'b_enc', 'b_dec', 'theta'): assert torch.equal(getattr(a, k), getattr(b, k)), k
        pd.testing.assert_frame_equal(ha, hb)
        assert a.cfg == b.cfg and a.cfg['model'] == 'synthetic'
    again = train_saes(cfgs, data, out_dir=tmp_path / 'b', resume=True, **kw)     # a finished run resumes to the same result
    assert torch.equal(again[0][0].W_dec, whole[0][0].W_dec)
    saved = load_sae(tmp_path / 'b' / cfgs[0].label)
    assert torch.equal(saved.theta, whole[0][0].theta) and not saved.pre_enc_bias
    hist = pd.read_csv(tmp_path / 'b' / cfgs[0].label / 'history.csv')
    assert list(hist.step) == list(range(4, 41, 4))


def test_uninterrupted_runs_are_deterministic():
    cfg = TrainConfig(d_sae=32, batch_size=128, n_tokens=128 * 10, target_l0=3, lr_warmup_steps=2, sparsity_warmup_steps=2)
    a = train_saes([cfg], _stream(10), progress=False, norm_tokens=256)[0][0]
    b = train_saes([cfg], _stream(10), progress=False, norm_tokens=256)[0][0]
    assert torch.equal(a.W_enc, b.W_enc) and torch.equal(a.theta, b.theta)


def test_nan_stops_and_keeps_checkpoint(tmp_path):
    cfg = TrainConfig(d_sae=32, batch_size=128, n_tokens=128 * 40, target_l0=3)
    def bad(src):
        for i, b in enumerate(src): yield b if i != 12 else b.masked_fill(b > 0, float('inf'))
    with pytest.raises(FloatingPointError, match='at step 12'):
        train_saes([cfg], bad(_stream()), out_dir=tmp_path, ckpt_every=5, progress=False, norm_tokens=256)
    assert json.loads((tmp_path / 'checkpoints' / 'step_00000010' / 'state.json').read_text())['step'] == 10


def test_bf16_keeps_fp32_thresholds_that_learn():
    cfg = TrainConfig(d_sae=64, batch_size=128, n_tokens=128 * 30, target_l0=2, dtype='bfloat16', lr=1e-3,
                      lr_warmup_steps=0, sparsity_warmup_steps=0)
    (sae, hist), = train_saes([cfg], _stream(30), progress=False, norm_tokens=256, norm_factor=1.0, log_every=10)
    assert sae.W_enc.dtype == torch.bfloat16 and sae.theta.dtype == torch.float32
    assert (sae.theta - 0.001).abs().max() > 1e-3            # 30 steps of ≈ lr each moved θ


def test_config_and_stream_checks():
    with pytest.raises(ValueError, match='share batch_size'):
        train_saes([TrainConfig(batch_size=128, n_tokens=1280), TrainConfig(batch_size=256, n_tokens=1280, name='b')], _stream())
    with pytest.raises(TypeError, match='expected TrainConfig'): train_saes([dict(d_sae=3)], _stream())
    with pytest.raises(ValueError, match='activations is empty'): train_saes([TrainConfig(batch_size=128, n_tokens=1280)], [])
    with pytest.raises(ValueError, match='resume=True needs out_dir'): train_saes([TrainConfig(batch_size=128, n_tokens=1280)], _stream(), resume=True)
    c = TrainConfig.preset('paper', n_tokens=2048 * 100, lr_warmup_steps=0)
    assert lr_at(c, 99) == pytest.approx(3e-4 * 1 / 20)


def _sae_at_l0(d, F, l0, B=256, seed=0, **kw):
    "An SAE whose thresholds give measured L0 ≈ `l0` on the returned batch, a few latents with θ < ε/2"
    torch.manual_seed(seed)
    sae = JumpReLUSAE(d, F, bandwidth=0.02, **kw)
    x = torch.randn(B, d) / d ** 0.5
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.02); sae.b_enc.normal_(0, 0.01)
        sae.theta.copy_(torch.quantile(sae.pre_acts(x), 1 - l0 / F, dim=0).clamp(min=0)); sae.theta[:4] = 0.005
    return sae, x


def _assert_same(a, b, rtol):
    for k, v in a['grads'].items():
        w = b['grads'][k]
        assert (w - v).norm().item() <= rtol * v.norm().item(), k
        torch.testing.assert_close(w, v, rtol=rtol, atol=rtol * v.abs().max().item(), msg=k)


@pytest.mark.parametrize('F,l0', [(128, 2), (128, 20), (1024, 5), (1024, 60)])
@pytest.mark.parametrize('pre', [False, True])
@pytest.mark.parametrize('step_on', ['pre', 'post'])
@pytest.mark.parametrize('penalty', ['target_l0', 'l0'])
def test_sparse_matches_dense(F, l0, pre, step_on, penalty):
    sae, x = _sae_at_l0(32, F, l0, pre_enc_bias=pre, step_on=step_on)
    cfg = TrainConfig(d_sae=F, penalty=penalty, target_l0=12.0, batch_size=256, n_tokens=256)
    a, b = fused_grads(sae, x, cfg, 0.3), sparse_grads(sae, x, cfg, 0.3)
    assert 0.5 * l0 < a['l0'].item() < 2 * l0 + 3 and a['n_window'] > 0
    assert (a['l0'].item(), a['n_window']) == (b['l0'].item(), b['n_window']) and torch.equal(a['fired'], b['fired'])
    assert abs(b['loss'].item() / a['loss'].item() - 1) < 1e-6
    _assert_same(a, b, 1e-5)


def test_sparse_edge_cases():
    "Nothing active, negative thresholds (then h ≤ 0 never fires), and bf16 weights"
    sae, x = _sae_at_l0(16, 64, 4)
    cfg = TrainConfig(d_sae=64, batch_size=256, n_tokens=256)
    with torch.no_grad(): sae.theta.fill_(50.0)
    a, b = fused_grads(sae, x, cfg, 0.3), sparse_grads(sae, x, cfg, 0.3)
    assert a['l0'].item() == b['l0'].item() == 0 and b['n_window'] == 0
    _assert_same(a, b, 1e-5)
    with torch.no_grad(): sae.theta.uniform_(-0.05, 0.05)
    a, b = fused_grads(sae, x, cfg, 0.3), sparse_grads(sae, x, cfg, 0.3)
    assert a['l0'].item() == b['l0'].item() and a['n_window'] == b['n_window'] > 0
    _assert_same(a, b, 1e-5)
    sae16 = sae.to(torch.bfloat16)
    a, b = fused_grads(sae16, x.bfloat16(), cfg, 0.3), sparse_grads(sae16, x.bfloat16(), cfg, 0.3)
    assert b['grads']['W_enc'].dtype == torch.bfloat16 and b['grads']['theta'].dtype == torch.float32
    assert abs(b['loss'].item() / a['loss'].item() - 1) < 1e-2


@pytest.mark.parametrize('fused', [False, True])
@pytest.mark.parametrize('preset', ['paper', 'paper_faithful', 'gemmascope'])
def test_sparse_training_matches_dense(preset, fused, monkeypatch):
    "Ten optimiser steps through the sparse and the dense step end at the same parameters, with either Adam kernel"
    monkeypatch.setattr(salmon.train, 'FUSED_ADAM_MIN', 0 if fused else 2**62)
    data = SparseDictionary(d=32, n_features=64, l0=3, batch_tokens=256, n_batches=10, seed=2)
    kw = dict(target_l0=4.0) if preset != 'gemmascope' else dict(sparsity_coeff=1e-2)
    cfg = TrainConfig.preset(preset, d_sae=256, batch_size=256, n_tokens=2560, lr=1e-3, lr_warmup_steps=0,
                             sparsity_warmup_steps=0, bandwidth=0.01, theta0=0.05, **kw)
    (d, hd), = train_saes([TrainConfig(**{**cfg.__dict__, 'sparse': 'off'})], data, progress=False, norm_factor=1.0, log_every=5)
    (s, hs), = train_saes([TrainConfig(**{**cfg.__dict__, 'sparse': 'on'})], data, progress=False, norm_factor=1.0, log_every=5)
    assert list(hs.sparse_frac) == [1.0, 1.0] and list(hd.sparse_frac) == [0.0, 0.0]
    for k in ('W_enc', 'W_dec', 'b_enc', 'b_dec', 'theta'):
        a, b = getattr(d, k), getattr(s, k)
        assert ((a - b).abs().max() / a.abs().max()).item() < 1e-5, k


@pytest.mark.parametrize('fused', [False, True])
def test_resume_bit_exact_sparse(tmp_path, fused, monkeypatch):
    monkeypatch.setattr(salmon.train, 'FUSED_ADAM_MIN', 0 if fused else 2**62)
    assert SAETrainer(TrainConfig(d_sae=64), 32).opt.defaults['fused'] == (True if fused else None)
    data = _stream()
    cfg = TrainConfig.preset('paper', d_sae=64, batch_size=128, n_tokens=128 * 40, target_l0=4, lr=1e-3, lr_warmup_steps=8,
                             sparsity_warmup_steps=12, bandwidth=0.02, theta0=0.02, sparse='on')
    kw = dict(log_every=4, ckpt_every=7, norm_tokens=300, progress=False)
    (whole, hw), = train_saes([cfg], data, out_dir=tmp_path / 'a', **kw)
    def dying(src, after):
        for i, b in enumerate(src):
            if i == after: raise KeyboardInterrupt
            yield b
    with pytest.raises(KeyboardInterrupt): train_saes([cfg], dying(data, 30), out_dir=tmp_path / 'b', **kw)
    (resumed, hr), = train_saes([cfg], data, out_dir=tmp_path / 'b', resume=True, **kw)
    for k in ('W_enc', 'W_dec', 'b_enc', 'b_dec', 'theta'): assert torch.equal(getattr(whole, k), getattr(resumed, k)), k
    pd.testing.assert_frame_equal(hw, hr)
    assert hw.sparse_frac.iloc[-1] == 1.0


def test_work_buffers_carry_nothing_over():
    "Gradients written into reused buffers (`bufs`) do not depend on what the buffers held"
    sae, x = _sae_at_l0(32, 1024, 20, pre_enc_bias=True)
    cfg = TrainConfig(d_sae=1024, target_l0=12.0, batch_size=256, n_tokens=256)
    ref = fused_grads(sae, x, cfg, 0.3)
    for sparse in ('off', 'on'):
        c, bufs = TrainConfig(**{**cfg.__dict__, 'sparse': sparse}), {}
        train_grads(sae, x, c, 0.3, bufs=bufs)
        assert {'h', 'W_enc', 'W_dec'} <= set(bufs), sorted(bufs)
        for b in bufs.values(): b.fill_(float('nan'))
        out = train_grads(sae, x, c, 0.3, bufs=bufs)
        assert out['sparse'] == (sparse == 'on') and out['grads']['W_enc'].data_ptr() == bufs['W_enc'].data_ptr()
        _assert_same(ref, out, 1e-5)
    with torch.no_grad(): sae.theta.fill_(50.0)                       # no pair at all: the CSR products are empty
    for b in bufs.values(): b.fill_(float('nan'))
    out, ref = sparse_grads(sae, x, cfg, 0.3, bufs=bufs), fused_grads(sae, x, cfg, 0.3)
    assert out['n_window'] == 0 and out['l0'].item() == 0
    _assert_same(ref, out, 1e-5)


def test_remove_parallel_blocks_same_bits():
    g, W = torch.randn(2500, 48), torch.nn.functional.normalize(torch.randn(2500, 48), dim=1)
    one = g - (g * W).sum(1, keepdim=True) * W
    for rows in (None, 7, 1024, 4096): assert torch.equal(remove_parallel_(g.clone(), W, rows=rows), one), rows
    assert (remove_parallel_(g.clone(), W) * W).sum(1).abs().max() < 1e-5


def _big_allocs(fn, n_bytes):
    "Allocations of at least `n_bytes` while `fn()` runs: [(op, bytes, input shapes)] (profile_memory, record_shapes)"
    from torch.profiler import profile
    with profile(profile_memory=True, record_shapes=True) as p: fn()
    return [(e.name, e.cpu_memory_usage, e.input_shapes) for e in p.events() if e.cpu_memory_usage >= n_bytes]


def test_sparse_step_allocates_no_dense_float_beyond_h():
    "Profiler: sparse gradients allocate one B×F float (h, by addmm) and ≤ 1 B/entry masks; later steps reuse h"
    B, d, F = 512, 32, 2048
    data = SparseDictionary(d=d, n_features=64, l0=3, batch_tokens=B, n_batches=1, seed=0)
    x = next(iter(data))
    tr = SAETrainer(TrainConfig(d_sae=F, batch_size=B, n_tokens=B * 10, sparse='on'), d)
    with torch.no_grad(): tr.sae.theta.copy_(torch.quantile(tr.sae.pre_acts(x), 1 - 20 / F, dim=0).clamp(min=0))   # L0 ≈ 20
    big = _big_allocs(lambda: sparse_grads(tr.sae, x, tr.cfg, 1.0), B * F)
    floats = [a for a in big if a[1] >= 4 * B * F and not a[0].startswith('aten::empty')]
    assert [a[0] for a in floats] == ['aten::addmm'] and floats[0][2][:3] == [[F], [B, d], [d, F]], big
    assert max(a[1] for a in big if a[0] != 'aten::addmm') < 2 * B * F, big
    tr.step(x, 0, 1.0)
    big = _big_allocs(lambda: tr.step(x, 1, 1.0), B * F)
    assert big and all(a[1] < 2 * B * F for a in big), big          # only the bool mask of the pairs
    assert 'h' in tr.bufs and tr.bufs['h'].shape == (B, F)


def _saelens_grads(sae, x, mode, coeff, target_l0=None, tanh_scale=4.0, log_theta=False):
    "Loss and gradients of SAELens's JumpReLU training SAE (installed 6.x) from `sae`'s parameters"
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, JumpReLU, Step
    from sae_lens.saes.sae import TrainStepInput
    if log_theta:
        # SAELens ≤ 6.47 (jbloomAus/SAELens, sae_lens/saes/jumprelu_sae.py at 03a2eaf5): threshold = exp(log_threshold),
        # feature_acts = JumpReLU(hidden_pre, threshold), l0_loss = (coeff * Step(hidden_pre, threshold).sum(-1)).mean()
        p = {k: getattr(sae, k).detach().clone().requires_grad_() for k in ('W_enc', 'W_dec', 'b_enc', 'b_dec')}
        p['log_threshold'] = sae.theta.detach().log().requires_grad_()
        th = torch.exp(p['log_threshold'])
        hidden_pre = (x - p['b_dec'] * sae.pre_enc_bias) @ p['W_enc'] + p['b_enc']
        acts = JumpReLU.apply(hidden_pre, th, sae.bandwidth, False)
        mse = torch.nn.functional.mse_loss(acts @ p['W_dec'] + p['b_dec'], x, reduction='none').sum(-1).mean()
        loss = mse + (coeff * Step.apply(hidden_pre, th, sae.bandwidth, False).sum(-1)).mean()
        return loss, dict(zip(p, torch.autograd.grad(loss, list(p.values()))))
    sl = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(
        d_in=sae.d_model, d_sae=sae.d_sae, dtype='float32', device='cpu', apply_b_dec_to_input=sae.pre_enc_bias,
        jumprelu_bandwidth=sae.bandwidth, jumprelu_sparsity_loss_mode=mode, target_l0=target_l0, jumprelu_tanh_scale=tanh_scale))
    with torch.no_grad():
        for k in ('W_enc', 'W_dec', 'b_enc', 'b_dec'): getattr(sl, k).copy_(getattr(sae, k))
        sl.threshold.copy_(sae.theta)
    out = sl.training_forward_pass(TrainStepInput(sae_in=x, coefficients={'l0': coeff}, dead_neuron_mask=None,
                                                  n_training_steps=0, is_logging_step=False))
    names = ('W_enc', 'W_dec', 'b_enc', 'b_dec', 'threshold')
    return out.loss, dict(zip(names, torch.autograd.grad(out.loss, [getattr(sl, k) for k in names])))


@pytest.mark.parametrize('sparse', ['off', 'on'])
@pytest.mark.parametrize('pre', [False, True])
@pytest.mark.parametrize('penalty,mode,log_theta', [('tanh', 'tanh', False), ('quadratic', 'quadratic', False),
                                                    ('l0', 'step', False), ('l0', 'step', True)])
@pytest.mark.parametrize('l0', [5, 40])
def test_penalties_match_saelens(sparse, pre, penalty, mode, log_theta, l0):
    pytest.importorskip('sae_lens')
    sae, x = _sae_at_l0(32, 512, l0, pre_enc_bias=pre)
    with torch.no_grad(): sae.W_dec.mul_(torch.linspace(0.5, 2.0, 512).unsqueeze(1))   # non-unit rows: the tanh norm term counts
    cfg = TrainConfig(d_sae=512, penalty=penalty, target_l0=12.0, tanh_scale=3.0, batch_size=256, n_tokens=256, sparse=sparse,
                      theta_param='log' if log_theta else 'linear')
    ref_loss, ref = _saelens_grads(sae, x, mode, 0.3, target_l0=12.0, tanh_scale=3.0, log_theta=log_theta)
    out = train_grads(sae, x, cfg, 0.3)
    assert out['sparse'] == (sparse == 'on')
    assert abs(out['loss'].item() / ref_loss.item() - 1) < 1e-6
    names = dict(threshold='theta', log_threshold='log_theta')
    for k, r in ref.items():
        g = out['grads'][names.get(k, k)]
        assert (g - r).norm().item() <= 1e-6 * r.norm().item(), (k, ((g - r).norm() / r.norm()).item())


@pytest.mark.parametrize('penalty', ['tanh', 'quadratic'])
@pytest.mark.parametrize('step_on', ['pre', 'post'])
def test_new_penalties_match_reference(penalty, step_on):
    "`reference_loss` (autograd through the STEs) is the spec for both STE placements; sparse and dense agree with it"
    sae, x = _sae_at_l0(24, 256, 10, step_on=step_on, pre_enc_bias=True)
    cfg = TrainConfig(d_sae=256, penalty=penalty, target_l0=8.0, batch_size=256, n_tokens=256)
    loss, _ = reference_loss(sae, x, cfg, 0.3)
    ref = dict(zip([n for n, _ in sae.named_parameters()], torch.autograd.grad(loss, list(sae.parameters()))))
    for fn in (fused_grads, sparse_grads):
        out = fn(sae, x, cfg, 0.3)
        assert abs(out['loss'].item() / loss.item() - 1) < 1e-6
        for k, r in ref.items(): assert (out['grads'][k] - r).norm().item() <= 1e-5 * r.norm().item(), (fn.__name__, k)


def test_log_theta_training_and_resume(tmp_path):
    "log-θ: θ stays positive, moves multiplicatively, and a resumed run is bit-exact"
    cfg = TrainConfig.preset('gemmascope', d_sae=64, batch_size=128, n_tokens=128 * 40, sparsity_coeff=1e-2, lr=1e-2,
                             lr_warmup_steps=4, sparsity_warmup_steps=8, bandwidth=0.02, theta0=0.02, theta_param='log', sparse='on')
    kw = dict(log_every=4, ckpt_every=7, norm_tokens=300, progress=False)
    (whole, _), = train_saes([cfg], _stream(), out_dir=tmp_path / 'a', **kw)
    def dying(src, after):
        for i, b in enumerate(src):
            if i == after: raise KeyboardInterrupt
            yield b
    with pytest.raises(KeyboardInterrupt): train_saes([cfg], dying(_stream(), 30), out_dir=tmp_path / 'b', **kw)
    (resumed, _), = train_saes([cfg], _stream(), out_dir=tmp_path / 'b', resume=True, **kw)
    assert torch.equal(whole.theta, resumed.theta) and torch.equal(whole.W_enc, resumed.W_enc)
    assert (whole.theta > 0).all() and not torch.allclose(whole.theta, torch.full_like(whole.theta, whole.theta[0].item()))


class _Chunks:
    "A resumable source of seeded chunks [16, 8] that records its position, like an `ActivationStream`"
    def __init__(self, n:int=200): self.n, self.i = n, 0
    def __iter__(self):
        while self.i < self.n:
            g = torch.Generator().manual_seed(self.i); self.i += 1
            yield torch.randn(16, 8, generator=g) * (1 + torch.arange(8) / 8)
    def state_dict(self): return dict(i=self.i)
    def load_state_dict(self, s): self.i = int(s['i'])


def test_streamed_source_state_is_hashed_and_falls_back(tmp_path):
    "The source's position is a hashed checkpoint file; a damaged newest checkpoint falls back to the previous one, still bit-exact"
    from salmon.trace import ActivationBuffer
    cfg = TrainConfig(d_sae=32, target_l0=4.0, batch_size=16, n_tokens=16 * 12, lr_warmup_steps=2, sparsity_warmup_steps=4, theta_param='log')
    buf = lambda: ActivationBuffer(_Chunks(), capacity=64, batch_tokens=16, seed=3)
    (whole, _), = train_saes([cfg], buf(), progress=False, norm_tokens=32)
    train_saes([cfg], buf(), out_dir=tmp_path, ckpt_every=2, max_steps=6, progress=False, norm_tokens=32)
    steps = sorted((tmp_path/'checkpoints').glob('step_*'))
    assert [p.name for p in steps] == ['step_00000004', 'step_00000006']
    man = json.loads((steps[-1]/'manifest.json').read_text())['files']
    assert {'stream.pt', 'sae_0.safetensors', 'state.pt', 'state.json'} <= set(man)
    f = steps[-1]/'stream.pt'; b = bytearray(f.read_bytes()); b[len(b) // 2] ^= 0xFF; f.write_bytes(bytes(b))
    with pytest.warns(UserWarning, match='falling back to the previous checkpoint'):
        (resumed, _), = train_saes([cfg], buf(), out_dir=tmp_path, resume=True, ckpt_every=2, progress=False, norm_tokens=32)
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path/'checkpoints').exists()                 # finished and saved: the checkpoints are removed


def test_speed_only_fields_do_not_block_resume(tmp_path):
    "sparse / sparse_max_density choose the step's path, not its result: a checkpoint resumes across them; other fields do not"
    from salmon.train import results_settings
    cfg = TrainConfig(d_sae=32, target_l0=4.0, batch_size=16, n_tokens=16 * 8, lr_warmup_steps=2, sparsity_warmup_steps=4, sparse='off')
    src = lambda: (c for c in _Chunks(8))
    train_saes([cfg], src(), out_dir=tmp_path, ckpt_every=2, max_steps=4, progress=False, norm_tokens=32)
    fast = TrainConfig(**{**cfg.__dict__, 'sparse': 'on', 'sparse_max_density': 0.5})
    assert results_settings(fast) == results_settings(cfg)
    (sae, h), = train_saes([fast], src(), out_dir=tmp_path, resume=True, ckpt_every=2, progress=False, norm_tokens=32)
    assert sae.cfg['n_tokens_trained'] == 16 * 8 and h.step.iloc[-1] == 8
    train_saes([cfg], src(), out_dir=tmp_path/'b', ckpt_every=2, max_steps=4, progress=False, norm_tokens=32)
    other = TrainConfig(**{**cfg.__dict__, 'tanh_scale': 2.0})
    with pytest.raises(ValueError, match='tanh_scale 4.0 -> 2.0'):
        train_saes([other], src(), out_dir=tmp_path/'b', resume=True, progress=False, norm_tokens=32)
