"Exhaustive checks of salmon.sae: STE gradients against the JumpReLU paper's pseudo-derivatives (arXiv 2407.14435), GemmaScope folding (arXiv 2408.05147 App. A), and the three disk formats, SAELens interop included."
import json, math
import numpy as np
import pytest
import torch
from salmon.sae import (JumpReLUSAE, jumprelu, step, fold_norm, save_sae, load_sae, save_saelens, load_saelens,
                        save_gemmascope_npz, load_gemmascope_npz)


def _rect(u): return ((u > -0.5) & (u < 0.5)).double()


@pytest.mark.parametrize('seed', range(5))
def test_ste_gradients_match_formulas(seed):
    g = torch.Generator().manual_seed(seed)
    B, F, eps = 64, 12, 0.05
    theta = (torch.rand(F, generator=g, dtype=torch.float64) * 0.2).requires_grad_()
    h = (torch.randn(B, F, generator=g, dtype=torch.float64) * 0.15).requires_grad_()
    up = torch.randn(B, F, generator=g, dtype=torch.float64)
    K = _rect((h.detach() - theta.detach()) / eps)
    f = jumprelu(h, theta, eps)
    assert torch.equal(f.detach(), h.detach() * ((h.detach() > theta.detach()) & (h.detach() > 0)))
    f.backward(up)
    assert torch.allclose(h.grad, up * (h.detach() > theta.detach()))
    assert torch.allclose(theta.grad, (-(theta.detach() / eps) * K * up).sum(0))
    assert (K.sum() > 0), 'the case must put tokens inside the window'
    theta.grad = None; h.grad = None
    step(h, theta, eps).backward(up)
    assert h.grad is None                                   # Step passes nothing to its input
    assert torch.allclose(theta.grad, (-(1 / eps) * K * up).sum(0))


def test_step_on_post_is_one_sided():
    "The paper's variant only sees tokens above the threshold (dictionary_learning #55)"
    theta = torch.tensor([0.1], requires_grad=True)
    h = torch.tensor([[0.09], [0.11], [0.5], [0.0]])
    step(h, theta, 0.04).sum().backward()
    pre = theta.grad.clone(); theta.grad = None
    step(jumprelu(h, theta, 0.04), theta, 0.04).sum().backward()
    assert pre.item() == pytest.approx(-2 / 0.04) and theta.grad.item() == pytest.approx(-1 / 0.04)


def test_jumprelu_never_emits_below_threshold():
    torch.manual_seed(0)
    sae = JumpReLUSAE(32, 256, theta0=0.3)
    with torch.no_grad(): f = sae.encode(torch.randn(512, 32))
    assert ((f == 0) | (f > sae.theta.detach())).all() and (f > 0).any()


@pytest.mark.parametrize('pre', [False, True])
@pytest.mark.parametrize('C', [0.01, 3.0, 512.0])
def test_folding_identity(pre, C):
    torch.manual_seed(2)
    sae = JumpReLUSAE(24, 96, pre_enc_bias=pre)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.05); sae.b_dec.normal_(0, 0.3); sae.theta.uniform_(0, 0.15)
        x_raw = C * torch.randn(300, 24) / math.sqrt(24)
        xh, f = sae(x_raw / C)
        fo = fold_norm(sae, C)
        xh2, f2 = fo(x_raw)
    assert not fo.pre_enc_bias and fo.cfg['norm_factor'] == C
    assert torch.equal(f2 > 0, f > 0)
    torch.testing.assert_close(f2, C * f, rtol=1e-4, atol=1e-5 * C)
    torch.testing.assert_close(xh2, C * xh, rtol=1e-4, atol=1e-5 * C)


def test_fold_twice_restores():
    torch.manual_seed(3)
    sae = JumpReLUSAE(8, 16)
    with torch.no_grad(): sae.b_enc.normal_(); sae.b_dec.normal_(); sae.theta.uniform_(0, 1)
    back = fold_norm(fold_norm(sae, 7.0), 1 / 7.0)
    for k in ('W_enc', 'W_dec', 'b_enc', 'b_dec', 'theta'):
        torch.testing.assert_close(getattr(back, k), getattr(sae, k))


def _random_sae(pre=False, dtype=torch.float32):
    torch.manual_seed(4)
    sae = JumpReLUSAE(16, 40, pre_enc_bias=pre, dtype=dtype)
    with torch.no_grad(): sae.b_enc.normal_(0, 0.1); sae.b_dec.normal_(); sae.theta.uniform_(0, 0.3)
    sae.cfg.update(model='tiny', layer=3, hook='model.layers.3', norm_factor=2.5)
    return sae


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_salmon_format_round_trip(tmp_path, dtype):
    sae = _random_sae(dtype=dtype)
    back = load_sae(save_sae(sae, tmp_path / 's'))
    for k in ('W_enc', 'W_dec', 'b_enc', 'b_dec', 'theta'):
        assert torch.equal(getattr(back, k), getattr(sae, k)) and getattr(back, k).dtype == getattr(sae, k).dtype
    assert back.cfg == sae.cfg and back.theta.dtype == torch.float32
    assert not list(tmp_path.glob('.*'))                       # no temporary left behind


def test_load_errors(tmp_path):
    sae = _random_sae()
    p = save_sae(sae, tmp_path / 's')
    cfg = json.loads((p / 'config.json').read_text()); cfg['d_sae'] = 41
    (p / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match='config.json says d_model=16, d_sae=41'): load_sae(p)
    with pytest.raises(FileNotFoundError, match='not a SAELens SAE folder: cfg.json is missing'): load_saelens(p)
    np.savez(tmp_path / 'x.npz', W_enc=np.zeros((4, 8), np.float32))
    with pytest.raises(KeyError, match="lacks tensor"): load_gemmascope_npz(tmp_path / 'x.npz')
    np.savez(tmp_path / 'y.npz', W_enc=np.zeros((4, 8), np.float32), W_dec=np.zeros((8, 4), np.float32), b_enc=np.zeros(8, np.float32),
             b_dec=np.zeros(4, np.float32), threshold=np.zeros(8, np.float32), scaling_factor=np.full(8, 2.0, np.float32))
    with pytest.raises(ValueError, match='scaling_factor other than 1'): load_gemmascope_npz(tmp_path / 'y.npz')


@pytest.mark.parametrize('pre', [False, True])
def test_gemmascope_round_trip(tmp_path, pre):
    sae = _random_sae(pre)
    back = load_gemmascope_npz(save_gemmascope_npz(sae, tmp_path / 'params.npz'))
    with np.load(tmp_path / 'params.npz') as z: assert sorted(z.files) == ['W_dec', 'W_enc', 'b_dec', 'b_enc', 'threshold']
    x = torch.randn(64, 16)
    with torch.no_grad(): torch.testing.assert_close(back(x)[0], sae(x)[0], rtol=1e-4, atol=1e-5)


def test_saelens_loads_our_export(tmp_path):
    "An SAE exported in SAELens format loads with SAELens' own loader and reconstructs identically"
    pytest.importorskip('sae_lens')
    from sae_lens import SAE
    sae = _random_sae(pre=True)                                 # exported folded
    p = save_saelens(sae, tmp_path / 'lens', context_size=128)
    theirs = SAE.load_from_disk(str(p))
    assert type(theirs).__name__ == 'JumpReLUSAE'
    assert theirs.cfg.metadata.hook_name == 'blocks.3.hook_resid_post' and theirs.cfg.metadata.nnsight_path == 'model.layers.3'
    x = torch.randn(128, 16) * 2
    with torch.no_grad():
        ours_f = sae.encode(x); their_f = theirs.encode(x)
        torch.testing.assert_close(their_f, ours_f, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(theirs.decode(their_f), sae.decode(ours_f), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(theirs(x), sae(x)[0], rtol=1e-4, atol=1e-5)


def test_we_load_saelens_save(tmp_path):
    "A JumpReLU SAE written by SAELens' own save_model reads back with load_saelens"
    pytest.importorskip('sae_lens')
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE as LensSAE, JumpReLUSAEConfig
    torch.manual_seed(5)
    lens = LensSAE(JumpReLUSAEConfig(d_in=16, d_sae=40, apply_b_dec_to_input=False))
    with torch.no_grad():
        for p in lens.parameters(): p.normal_(0, 0.2)
        lens.threshold.uniform_(0, 0.3)
    lens.save_model(tmp_path / 'l')
    ours = load_saelens(tmp_path / 'l')
    x = torch.randn(64, 16)
    with torch.no_grad(): torch.testing.assert_close(ours(x)[0], lens(x), rtol=1e-4, atol=1e-5)
