"Exhaustive checks of salmon.train: fused gradients vs autograd, synthetic recovery, exact resume, NaN stop, bf16 thresholds."
import json, time
import pandas as pd
import pytest
import torch
from salmon.sae import JumpReLUSAE, load_sae
from salmon.synthetic import SparseDictionary, recovery
from salmon.train import TrainConfig, SAETrainer, fused_grads, reference_loss, train_saes, lr_at


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
    "≥ 90 % of the true features matched by a latent with decoder cosine ≥ 0.9, well under a minute"
    n = 2000
    data = SparseDictionary(d=64, n_features=128, l0=4, alpha=0.3, corr=0.3, batch_tokens=512, n_batches=n, seed=3)
    cfg = TrainConfig.preset('paper', d_sae=256, target_l0=5.0, batch_size=512, n_tokens=512 * n, lr=3e-3, lr_warmup_steps=100,
                             sparsity_warmup_steps=300, bandwidth=0.01, theta0=0.01, seed=3)
    t0 = time.perf_counter()
    (sae, hist), = train_saes([cfg], data, log_every=100, progress=False)
    secs = time.perf_counter() - t0
    rec = recovery(sae.W_dec, data.features)
    assert rec >= 0.9, f'recovered {rec:.1%}'
    assert abs(hist.l0.iloc[-1] - 5.0) < 0.5 and hist.fve.iloc[-1] > 0.85
    assert secs < 60


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
