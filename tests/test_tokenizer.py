"""Column tokenizer: shapes, sizes, input errors, σ-VAE draw, grid layout, long decode, checkpoints."""
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from minieq import (ColumnTokenizer, TokenizerConfig, load_checkpoint, sigma_vae_sample,
                    save_checkpoint)
from minieq.tokenizer_blocks import pixel_shuffle, pixel_unshuffle
from minieq.utils import count_parameters

GOLDEN_PARAMS = {  # the official model.params of the parity fixture (its public_config.json)
    "embed_dim": 8, "post_channels": 128, "std": 2.5,
    "ddconfig": {"double_enc": False, "z_channels": 8, "resolution": 256, "in_channels": 3,
                 "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 2, 2, 2], "num_res_blocks": 1,
                 "dropout": 0.0, "attn_resolutions": [16], "len_down_scale": 4,
                 "semantic_map": "res"},
    "sematicconfig": {"z_channels": 8, "resolution": 256, "in_channels": 3, "out_ch": 96,
                      "ch": 32, "ch_mult": [2, 3], "num_res_blocks": 1, "dropout": 0.0,
                      "attn_resolutions": [], "downsample_scale": 0},
}


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    return ColumnTokenizer(TokenizerConfig.preset("tiny")).eval()


def images(n_tokens, batch=2, cfg=None, seed=1):
    cfg = cfg or TokenizerConfig.preset("tiny")
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, cfg.image_height, n_tokens * cfg.column_width, generator=g) * 2 - 1


def test_tiny_preset_sizes():
    cfg = TokenizerConfig.preset("tiny")
    assert (cfg.image_height, cfg.column_width, cfg.embed_dim) == (32, 8, 16)
    assert (cfg.final_height, cfg.post_channels) == (4, 32)
    paper = TokenizerConfig.preset("paper")
    assert (paper.image_height, paper.column_width, paper.embed_dim) == (256, 16, 256)
    assert paper.post_channels == 4096


@torch.no_grad()
def test_encode_decode_reconstruct_shapes(tok):
    x = images(16)
    z = tok.encode(x)
    assert z.shape == (2, 16, 16)
    assert tok.decode(z).shape == x.shape
    out = tok.reconstruct(x, sample=True, semantic=True, generator=torch.Generator().manual_seed(5))
    assert out.recon.shape == x.shape and out.mean.shape == out.tokens.shape == z.shape
    assert torch.allclose(out.mean, z)
    # reconstruct decodes exactly the σ-VAE draw of the mean that it returns.
    draw = sigma_vae_sample(z, tok.config.noise_std, torch.Generator().manual_seed(5))
    assert torch.allclose(out.tokens, draw, atol=1e-6)
    assert torch.allclose(out.recon, tok.decode(draw), atol=1e-5)
    assert out.semantic.shape == (2, 64, 4, 16)
    plain = tok.reconstruct(x, sample=False)
    assert plain.semantic is None and torch.equal(plain.tokens, plain.mean)
    assert torch.allclose(plain.recon, tok.decode(z), atol=1e-6)


# Mean and mean |.| of tok.decode in test_decode_any_length, measured once on this random tiny
# model (torch 2.14.1, CPU): a regression value for the decoder at lengths it was not built for.
DECODE_STATS = {2: (0.0416575, 0.1899357), 3: (0.0401226, 0.1937326), 7: (0.0408957, 0.1955318),
                40: (0.0409297, 0.1958240)}


@torch.no_grad()
@pytest.mark.parametrize("n", [2, 3, 7, 40])
def test_decode_any_length(tok, n):
    z = tok.encode(images(4))  # decode more (or fewer) tokens than were encoded
    z = z.repeat(1, n // 4 + 1, 1)[:, :n]
    out = tok.decode(z)
    assert out.shape == (2, 3, 32, 8 * n)
    mean, abs_mean = DECODE_STATS[n]
    assert out.mean().item() == pytest.approx(mean, abs=1e-5)
    assert out.abs().mean().item() == pytest.approx(abs_mean, abs=1e-5)


@torch.no_grad()
def test_bad_inputs_raise_clear_errors(tok):
    with pytest.raises(ValueError, match="height"):
        tok.encode(torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of the column width"):
        tok.encode(torch.zeros(1, 3, 32, 60))
    with pytest.raises(ValueError, match="two tokens"):
        tok.encode(torch.zeros(1, 3, 32, 8))
    with pytest.raises(ValueError, match="expects images"):
        tok.encode(torch.zeros(3, 32, 64))
    with pytest.raises(ValueError, match="at least 2"):
        tok.decode(torch.zeros(1, 1, 16))
    with pytest.raises(ValueError, match="expects tokens"):
        tok.decode(torch.zeros(1, 4, 15))


@torch.no_grad()
def test_common_image_mistakes_raise_one_clear_error(tok):
    x = images(4)
    with pytest.raises(ValueError, match="NaN or inf"):
        tok.encode(x.index_put((torch.tensor([1]),), torch.tensor(float("nan"))))
    with pytest.raises(ValueError, match="NaN or inf"):
        tok.reconstruct(torch.where(x > 0.9, float("inf"), x))
    with pytest.raises(ValueError, match="uint8.*127.5"):
        tok.encode(((x + 1) * 127.5).to(torch.uint8))
    with pytest.raises(ValueError, match=r"\[-1, 1\].*255"):
        tok.encode((x + 1) * 127.5)  # float [0, 255]
    tok.encode((x + 1) / 2)  # [0, 1] cannot be told from a bright [-1, 1] image: accepted
    tok.encode(2.4 * x)  # an unclamped decoder output may be encoded again
    tok.train()  # training mode: no value check (no device sync per step), the dtype check stays
    try:
        z = tok.encode((x + 1) * 127.5)  # [0, 255] floats pass unchecked in training mode
        assert z.shape == (x.shape[0], x.shape[-1] // tok.config.column_width, tok.config.embed_dim)
        with pytest.raises(ValueError, match="uint8.*127.5"):
            tok.encode(((x + 1) * 127.5).to(torch.uint8))
    finally:
        tok.eval()


@torch.no_grad()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_images_and_tokens_are_cast_to_the_weights_dtype(tok, dtype):
    x = images(4)
    z = tok.encode(x.to(dtype))  # a raw conv dtype error before the cast
    assert z.dtype == next(tok.parameters()).dtype == torch.float32
    # The cast only rounds the input: same tokens as the float32 image rounded the same way.
    assert torch.equal(z, tok.encode(x.to(dtype).float()))
    out = tok.decode(z.to(dtype))
    assert out.dtype == torch.float32 and torch.equal(out, tok.decode(z.to(dtype).float()))


@torch.no_grad()
def test_non_finite_tokens_refused_by_decode_in_eval_mode_only(tok):
    z = tok.encode(images(4))
    for bad in (float("nan"), float("inf")):
        broken = z.clone()
        broken[0, 2, 3] = bad
        with pytest.raises(ValueError, match="tokens contain NaN or inf.*decode finite tokens"):
            tok.decode(broken)
        with pytest.raises(ValueError, match="tokens contain NaN or inf"):
            tok.decode_long(broken.repeat(1, 12, 1), tile=8, overlap=8)
    tok.train()  # training mode: no value check, so no device sync per step
    try:
        broken[0, 2, 3] = float("nan")
        assert torch.isnan(tok.decode(broken)).any()
    finally:
        tok.eval()


@pytest.mark.parametrize("change, message", [
    (dict(num_groups=7), "num_groups"),
    (dict(len_down_scale=4), "len_down_scale"),
    (dict(image_height=36), "image_height"),
    (dict(layout="grid", len_down_scale=2), "grid layout"),
    (dict(semantic_ch=16), "semantic_ch"),
    (dict(semantic_map="top"), "semantic_map"),
])
def test_inconsistent_config_raises(change, message):
    with pytest.raises(ValueError, match=message):
        TokenizerConfig.preset("tiny", **change)


def test_paper_parameter_counts_match_the_official_model():
    with torch.device("meta"):
        model = ColumnTokenizer(TokenizerConfig.preset("paper"))
    counts = {name: count_parameters(getattr(model, name)) for name in
              ("encoder", "quant_layer", "post_quant_layer", "decoder", "semantic_decoder")}
    assert counts == {"encoder": 86_050_816, "quant_layer": 3_145_984,
                      "post_quant_layer": 3_149_824, "decoder": 121_548_547,
                      "semantic_decoder": 67_663_360}  # docs/official_code.md#parameter-counts
    assert count_parameters(model) - counts["semantic_decoder"] == 213_895_171  # 213.9 M
    assert model.encoder.encoder1d.weight.shape == (4096, 4096, 3)
    assert model.last_layer_weight is model.decoder.conv_out.weight


def test_from_official_builds_the_golden_config():
    cfg = TokenizerConfig.from_official(GOLDEN_PARAMS)
    assert (cfg.column_width, cfg.final_height, cfg.post_channels) == (16, 16, 128)
    assert (cfg.semantic_out_channels, cfg.noise_std) == (96, 2.5)
    with torch.device("meta"):
        state = ColumnTokenizer(cfg).state_dict()
    assert state["semantic_decoder.down.0.block.0.conv1.weight"].shape == (96, 64, 3, 3)
    assert state["decoder.up.1.upsample.conv.conv.weight"].shape == (128, 32, 3, 3)
    with pytest.raises(ValueError, match="post_channels"):
        TokenizerConfig.from_official({**GOLDEN_PARAMS, "post_channels": 256})


def test_sigma_vae_sample_statistics():
    g = torch.Generator().manual_seed(0)
    mean = torch.zeros(2000, 2, 2048)
    noise = sigma_vae_sample(mean, std=2.5, generator=g)
    # One scalar per sample: the noise std of the two halves of a sample agree.
    first, second = noise[:, 0].std(dim=1), noise[:, 1].std(dim=1)
    assert torch.corrcoef(torch.stack([first, second]))[0, 1] > 0.99
    scale = noise.flatten(1).std(dim=1)
    assert scale.max() < 2.5 * 1.06  # clamped at the bound (std estimates are ±1 %)
    assert abs((scale > 2.44).float().mean().item() - 0.42) < 0.04  # P(|N(0,1)| ≥ 0.8) ≈ 0.424
    assert abs(noise.std().item() - 1.94) < 0.05  # docs/official_code.md#sigma-vae-posterior
    shifted = sigma_vae_sample(mean + 3.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(shifted - 3.0, noise, atol=1e-5)


def test_kl_is_half_sum_of_squares(tok):
    mean = torch.randn(3, 5, 16)
    assert torch.allclose(tok.kl(mean), 0.5 * (mean ** 2).sum(dim=(1, 2)))


def test_sampled_encode_is_reproducible(tok):
    x = images(4)
    with torch.no_grad():
        a = tok.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
        b = tok.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.allclose(a, tok.encode(x))


def test_pixel_shuffles_match_torch_and_invert():
    x = torch.randn(2, 8, 6, 4)
    assert torch.equal(pixel_unshuffle(x, (2, 2)), F.pixel_unshuffle(x, 2))
    assert torch.equal(pixel_shuffle(pixel_unshuffle(x, (2, 2)), (2, 2)), x)
    y = pixel_unshuffle(x, (2, 1))
    assert y.shape == (2, 16, 3, 4) and torch.equal(y[:, 1::2], x[:, :, 1::2])
    assert torch.equal(pixel_shuffle(y, (2, 1)), x)


def test_semantic_dead_blocks_are_frozen_and_unused(tok):
    cfg = tok.config
    dead = tok.semantic_decoder.down[0].block[cfg.semantic_num_res_blocks]
    assert not any(p.requires_grad for p in dead.parameters())
    tok.semantic_decoder.requires_grad_(True)  # asking to train the head keeps them frozen
    assert not any(p.requires_grad for p in dead.parameters())
    assert all(p.requires_grad for p in tok.semantic_decoder.conv_out.parameters())
    x = images(4)
    with torch.no_grad():
        before = tok.reconstruct(x, sample=False, semantic=True).semantic
        for p in dead.parameters():
            p.add_(1.0)
        after = tok.reconstruct(x, sample=False, semantic=True).semantic
        for p in dead.parameters():
            p.sub_(1.0)
    assert torch.equal(before, after)


@torch.no_grad()
def test_shifting_the_image_one_column_shifts_the_interior_tokens(tok):
    """The paper's core property (Sec. 3.1): token k describes column k, so moving the picture
    one column width to the left moves every token one place left. Zero padding at the borders,
    GroupNorm and the mid-block attention see the whole image, so it holds away from the edges
    and up to a small error (measured 0.018 on this random tiny model, tokens ~0.12)."""
    wide = images(33)
    a = tok.encode(wide[..., :32 * 8])  # columns 0..31
    b = tok.encode(wide[..., 8:])  # columns 1..32: the same picture one column width to the left
    err = (a[:, 1:] - b[:, :-1]).abs().amax(dim=(0, 2))  # (31,) token k+1 of a vs token k of b
    scale = a.abs().mean()
    assert err[8:-8].max() < 0.25 * scale
    assert err[0] > 2 * err[8:-8].max()  # the edge token sees different borders
    unshifted = (a[:, 9:-8] - b[:, 9:-8]).abs().amax()  # a bug that ignores the shift
    assert unshifted > 4 * err[8:-8].max()


@torch.no_grad()
def test_grid_layout_shapes():
    torch.manual_seed(0)
    grid = ColumnTokenizer(TokenizerConfig.preset("tiny", layout="grid")).eval()
    x = images(16)  # 32 × 128 → a 4 × 16 map → 64 tokens in raster order
    z = grid.encode(x)
    assert z.shape == (2, 4 * 16, 16)
    # Raster order: token r·16 + c is map row r, column c.
    moments = grid.quant_layer(grid.encoder(x))  # (B, C, 4, 16)
    assert torch.equal(z, rearrange(moments, "b c h w -> b (h w) c"))
    assert grid.decode(z).shape == x.shape
    # Values measured once on this random tiny model (torch 2.14.1, CPU), see DECODE_STATS.
    assert z.abs().mean().item() == pytest.approx(0.1092919, abs=1e-5)
    assert grid.decode(z).abs().mean().item() == pytest.approx(0.2944237, abs=1e-5)
    first_columns = rearrange(z, "b (h w) c -> b h w c", h=4)[:, :, :3]  # (B, 4, 3, C)
    assert grid.decode(rearrange(first_columns, "b h w c -> b (h w) c")).shape == (2, 3, 32, 24)
    with pytest.raises(ValueError, match="raster-order rows"):
        grid.decode(z[:, :10])
    assert grid.reconstruct(x, semantic=True).semantic.shape == (2, 64, 4, 16)


@torch.no_grad()
def test_decode_long_matches_full_decode(tok):
    z = tok.encode(images(40, batch=1))
    full = tok.decode(z)
    assert torch.equal(tok.decode_long(z, tile=32, overlap=8), full)  # one window = exact
    tiled = tok.decode_long(z, tile=8, overlap=8)
    assert tiled.shape == full.shape
    # Not exact (global GroupNorm + attention); measured 3.9e-2 for this random tiny model.
    assert ((tiled - full).abs().max() / full.abs().max()).item() < 5e-2
    with pytest.raises(ValueError, match="tile"):
        tok.decode_long(z, tile=0, overlap=4)


@torch.no_grad()
def test_decode_long_leaves_no_step_at_window_boundaries(tok):
    # Each window sees its own GroupNorm statistics and attention context, so its colours are off
    # by its own small amount. Cut at the boundaries, that difference was a step in the mean colour
    # of the token columns (measured here: 3.4e-3 at a boundary, at most 6.8e-4 elsewhere).
    # The cross-fade makes the error change no faster at a boundary than anywhere else.
    z = tok.encode(images(40, batch=2))
    error = (tok.decode_long(z, tile=8, overlap=8) - tok.decode(z)).mean(dim=(0, 1, 2))  # (W,)
    per_token = error.view(40, tok.config.column_width).mean(dim=1)  # (N,) mean colour error
    jumps = per_token.diff().abs()  # jumps[k]: from token column k to k + 1
    at_boundary = torch.zeros(39, dtype=torch.bool)
    at_boundary[[7, 15, 23, 31]] = True  # windows start every 8 token columns
    assert jumps[at_boundary].max() <= jumps[~at_boundary].max(), (
        f"step at a window boundary: {jumps[at_boundary].max():.1e} vs at most "
        f"{jumps[~at_boundary].max():.1e} between other columns")


def test_checkpoint_round_trip(tmp_path, tok):
    path = save_checkpoint(tmp_path / "tok.pt", tok)
    loaded = load_checkpoint(path)
    assert isinstance(loaded, ColumnTokenizer) and loaded.config == tok.config
    x = images(4)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), tok.encode(x))
    grid = ColumnTokenizer(TokenizerConfig.preset("tiny", layout="grid"))
    assert load_checkpoint(save_checkpoint(tmp_path / "grid.pt", grid)).config.layout == "grid"
