"""Tokenizer objective, discriminators, DiffAug and the ViT backbones (micro sizes, random weights)."""
import pytest
import torch
from torch.nn.utils import parametrize

from minieq.backbones import VIT_SPECS, ViT, find_pretrained, load_vit
from minieq.discriminator import DinoDiscriminator, PatchGAN, diff_augment
from minieq.losses import TokenizerLoss, TokenizerLossConfig
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig

MICRO = dict(ch=8, ch_mult=[1, 1, 1, 1], num_groups=4, z_channels=4, embed_dim=8, attn_resolutions=[],
             semantic_ch=8, semantic_ch_mult=[1, 1], semantic_out_channels=8)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No pretrained file anywhere: an empty hub cache and no $MINIEQ_WEIGHTS_DIR."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv("MINIEQ_WEIGHTS_DIR", raising=False)
    return tmp_path


@pytest.fixture
def tok():
    torch.manual_seed(0)
    return ColumnTokenizer(TokenizerConfig.preset("tiny", **MICRO))


def images(b=4, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 32, w, generator=g) * 2 - 1


def small_dino():
    return load_vit("dino_vits16", random_init=True, embed_dim=32, depth=4, num_heads=2)


def test_offline_terms_are_disabled_with_one_line_each(offline, capsys):
    loss = TokenizerLoss(TokenizerLossConfig())
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("LPIPS off: vgg16-397923af.pth not found")
    assert lines[1].startswith("GAN loss off: dino_deitsmall16_pretrain.pth not found")
    assert lines[2].startswith("semantic loss off: dinov2_vitb14_pretrain.pth not found")
    assert str(offline / "hub") in lines[0]
    assert loss.discriminator is None and not loss.semantic_active(10 ** 9)
    assert not loss.disc_active(10 ** 9)


def test_rec_and_kl_terms_official_and_mean_reduction(offline, tok):
    x = images()
    out = tok.reconstruct(x, sample=False)
    cfg = TokenizerLossConfig(lpips_weight=0.0, disc_type="none", semantic_weight=0.0)
    official = TokenizerLoss(cfg).generator_loss(x, out, step=0)
    per_pixel = TokenizerLoss(cfg.replace(reduction="mean")).generator_loss(x, out, step=0)
    l1_sum = (x - out.recon).abs().sum() / x.shape[0]
    kl = (0.5 * out.mean.pow(2).sum(dim=(1, 2))).mean()
    torch.testing.assert_close(official["rec_loss"], l1_sum)
    torch.testing.assert_close(official["kl_loss"], kl)
    torch.testing.assert_close(official["loss"], l1_sum + 0.01 * kl)
    # "mean" is exactly the official loss divided by 3·H·W.
    torch.testing.assert_close(per_pixel["loss"] * x[0].numel(), official["loss"])
    assert official["g_loss"] == 0 and official["semantic_loss"] == 0


def test_lpips_is_broadcast_to_every_pixel(offline, tok):
    class ConstantLPIPS(torch.nn.Module):
        def forward(self, a, b):
            return torch.full((a.shape[0], 1, 1, 1), 0.1)

    x = images()
    out = tok.reconstruct(x, sample=False)
    loss = TokenizerLoss(TokenizerLossConfig(lpips_weight=2.0, disc_type="none", semantic_weight=0.0))
    loss._frozen["lpips"] = ConstantLPIPS()
    logs = loss.generator_loss(x, out, step=0)
    l1_sum = (x - out.recon).abs().sum() / x.shape[0]
    torch.testing.assert_close(logs["rec_loss"], l1_sum + 2.0 * 0.1 * x[0].numel())
    assert logs["lpips"].item() == pytest.approx(0.1)


def test_gan_terms_and_adaptive_weight_from_last_layer(offline, tok):
    torch.manual_seed(1)
    cfg = TokenizerLossConfig(lpips_weight=0.0, semantic_weight=0.0, disc_start=5)
    loss = TokenizerLoss(cfg, allow_random_backbones=True)
    assert isinstance(loss.discriminator, DinoDiscriminator)
    calls = []
    loss.discriminator.register_forward_hook(lambda *a: calls.append(1))
    x = images()

    before = loss.generator_loss(x, tok.reconstruct(x), step=4, last_layer=tok.last_layer_weight)
    assert before["d_weight"] == 0 and before["g_loss"] == 0 and before["disc_factor"] == 0
    assert not calls, "the discriminator must not run before disc_start"

    out = tok.reconstruct(x)
    logs = loss.generator_loss(x, out, step=5, last_layer=tok.last_layer_weight)
    assert calls and logs["disc_factor"] == 1 and torch.isfinite(logs["loss"])
    # Recompute the adaptive weight by hand from the same graph.
    nll = (x - out.recon).abs().sum() / x.shape[0]
    g_grad = torch.autograd.grad(logs["loss"] - nll - 0.01 * logs["kl_loss"], tok.last_layer_weight,
                                 retain_graph=True)[0] / logs["d_weight"]
    nll_grad = torch.autograd.grad(nll, tok.last_layer_weight, retain_graph=True)[0]
    expected = 0.5 * min(nll_grad.norm() / (g_grad.norm() + 1e-4), 1e4)
    assert logs["d_weight"].item() == pytest.approx(float(expected), rel=1e-3)
    assert logs["d_weight"] > 0
    # The generator step gives the discriminator no gradient.
    logs["loss"].backward()
    assert all(p.grad is None for p in loss.discriminator.parameters())

    d = loss.discriminator_loss(x, out.recon, step=5)
    assert d["disc_loss"].item() >= 0 and torch.isfinite(d["disc_loss"])
    d["disc_loss"].backward()
    assert all(p.grad is not None for p in loss.discriminator.parameters())


def test_semantic_term_runs_teacher_only_when_on(offline, tok):
    cfg = TokenizerLossConfig(lpips_weight=0.0, disc_type="none", semantic_start=3)
    loss = TokenizerLoss(cfg, semantic_channels=tok.config.semantic_out_channels,
                         allow_random_backbones=True)
    teacher = loss._frozen["teacher"]
    calls = []
    teacher.register_forward_pre_hook(lambda *a: calls.append(1))
    for block in teacher.blocks:
        block.register_forward_pre_hook(lambda *a: calls.append(1))
    x = images()
    assert not loss.semantic_active(2)
    logs = loss.generator_loss(x, tok.reconstruct(x, semantic=False), step=2)
    assert logs["semantic_loss"] == 0 and logs["semantic_factor"] == 0 and not calls
    out = tok.reconstruct(x, semantic=True)
    logs = loss.generator_loss(x, out, step=3)
    assert calls and logs["semantic_factor"] == 5.0
    sem = logs["semantic_loss"]
    assert torch.isfinite(sem) and sem > 0
    # Σ over (channels × patches) / B: the teacher grid equals the prediction's (4 × 8 here).
    assert out.semantic.shape == (4, 8, 4, 8)
    with pytest.raises(ValueError, match="semantic=True"):
        loss.generator_loss(x, tok.reconstruct(x), step=3)


def test_semantic_width_mismatch_is_a_clear_error(offline, monkeypatch):
    wide = load_vit("dinov2_vitb14", random_init=True, embed_dim=16, depth=1, num_heads=2)
    monkeypatch.setattr("minieq.losses.load_vit", lambda kind, *a, **k: wide)  # "found" a 16-wide teacher
    with pytest.raises(ValueError, match="semantic_out_channels=8"):
        TokenizerLoss(TokenizerLossConfig(disc_type="none", lpips_weight=0.0), semantic_channels=8)


def test_dino_discriminator_shape_frozen_backbone_and_spectral_norm():
    torch.manual_seed(0)
    backbone = small_dino()
    disc = DinoDiscriminator(backbone)
    logits = disc(images(b=3, w=128))
    assert logits.shape == (3, 980)  # 5 heads × 14×14 patches of a 224 input
    assert all(k.startswith("heads.") for k in disc.state_dict())
    assert not any(p is q for p in disc.parameters() for q in backbone.parameters())
    disc.train()
    assert not backbone.training
    d = backbone.spec.embed_dim
    for block in backbone.blocks:
        assert torch.all(block.attn.qkv.bias[d:2 * d] == 0)
    convs = [m for m in disc.heads.modules() if isinstance(m, torch.nn.Conv1d)]
    assert len(convs) == 15 and all(parametrize.is_parametrized(c, "weight") for c in convs)
    assert disc.layers == (0, 1, 2, 3)  # depth 4: the end of each quarter (2, 5, 8, 11 for 12)


def test_patchgan_logits_and_in_the_loss(offline, tok):
    d = PatchGAN(channels=8, num_layers=2)
    # 32 × 64 -> 16 × 32 -> 8 × 16 (two stride-2 convs) -> 7 × 15 -> 6 × 14 (4 × 4 convs, stride 1)
    assert d(images(b=2)).shape == (2, 6 * 14)
    loss = TokenizerLoss(TokenizerLossConfig(disc_type="patchgan", patchgan_channels=8, patchgan_layers=2,
                                             lpips_weight=0.0, semantic_weight=0.0, disc_start=0,
                                             diffaug=False))
    x = images()
    out = tok.reconstruct(x)
    logs = loss.generator_loss(x, out, step=0, last_layer=tok.last_layer_weight)
    # By hand (docs/official_code.md#tokenizer-loss): g = −mean D(x̂);
    # d_weight = 0.5·‖∇nll‖ / (‖∇g‖ + 1e-4) on the last layer.
    g = -loss.discriminator(out.recon).mean()
    nll = (x - out.recon).abs().sum() / x.shape[0]
    nll_grad, = torch.autograd.grad(nll, tok.last_layer_weight, retain_graph=True)
    g_grad, = torch.autograd.grad(g, tok.last_layer_weight, retain_graph=True)
    torch.testing.assert_close(logs["g_loss"], g.detach())
    torch.testing.assert_close(logs["d_weight"], 0.5 * nll_grad.norm() / (g_grad.norm() + 1e-4))
    torch.testing.assert_close(logs["loss"], nll + 0.01 * tok.kl(out.mean).mean() + logs["d_weight"] * g)


def test_diffaug_shapes_and_per_sample_randomness():
    torch.manual_seed(0)
    x = images(b=1, w=128).repeat(6, 1, 1, 1)
    y = diff_augment(x)
    assert y.shape == x.shape
    flat = y.flatten(1)
    assert all(not torch.equal(flat[0], flat[i]) for i in range(1, 6))
    # Translation brings in zeros and moves content; cutout zeroes a 6×26 block at least partly.
    ones = torch.ones(8, 3, 32, 128)
    from minieq.discriminator import _cutout, _translate
    shifted = _translate(ones, 0.125)
    assert set(shifted.unique().tolist()) <= {0.0, 1.0}
    zeros_per_image = (_cutout(ones, 0.2)[:, 0] == 0).flatten(1).sum(1)
    assert torch.all(zeros_per_image > 0) and torch.all(zeros_per_image <= 6 * 26)


def test_vit_names_match_the_released_checkpoints():
    with torch.device("meta"):
        v2 = ViT(VIT_SPECS["dinov2_vitb14"])
        v1 = ViT(VIT_SPECS["dino_vits16"])
    s2, s1 = v2.state_dict(), v1.state_dict()
    assert s2["pos_embed"].shape == (1, 1 + 37 * 37, 768)
    assert "blocks.11.ls2.gamma" in s2 and "blocks.0.attn.qkv.bias" in s2 and "norm.weight" in s2
    assert s1["pos_embed"].shape == (1, 197, 384) and not any("ls1" in k for k in s1)
    assert len(s1) == 4 + 12 * 12 + 2 and len(s2) == len(s1) + 24
    assert s1["patch_embed.proj.weight"].shape == (384, 3, 16, 16)


def test_pos_embed_resampling_and_features():
    vit = load_vit("dinov2_vitb14", random_init=True, embed_dim=16, depth=2, num_heads=2, pos_grid=6)
    assert torch.equal(vit.pos_embed_for(6, 6), vit.pos_embed)
    assert vit.pos_embed_for(2, 8).shape == (1, 1 + 16, 16)
    x = torch.randn(2, 3, 28, 112)
    assert vit.patch_features(x).shape == (2, 16, 16)
    feats = vit.intermediate_tokens(x, layers=(0, 1))
    assert len(feats) == 3 and all(f.shape == (2, 17, 16) for f in feats)
    with pytest.raises(ValueError, match="multiples of 14"):
        vit.patch_features(torch.randn(1, 3, 30, 30))


def test_find_pretrained_search_order(offline, monkeypatch):
    assert find_pretrained("dino_deitsmall16_pretrain.pth") is None
    assert load_vit("dino_vits16") is None
    weights = offline / "weights"
    weights.mkdir()
    (weights / "x.pth").write_bytes(b"")
    monkeypatch.setenv("MINIEQ_WEIGHTS_DIR", str(weights))
    assert find_pretrained("x.pth") == weights / "x.pth"
    hub = offline / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "y.pth").write_bytes(b"")
    assert find_pretrained("y.pth") == hub / "y.pth"
    explicit = offline / "mine.pth"
    explicit.write_bytes(b"")
    assert find_pretrained("x.pth", explicit) == explicit
