"""Tokenizer training: exact resume, NaN guard, stage 2, CLI wiring, latent caching (micro sizes)."""
from pathlib import Path

import pytest
import torch

import minieq.train_tokenizer as tt
from minieq.cache_latents import cache_latents
from minieq.checkpoint import load_checkpoint, read_checkpoint
from minieq.data import SynthScapes
from minieq.losses import TokenizerLoss
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig
from minieq.training import NonFiniteLossError

MICRO = dict(ch=8, ch_mult=[1, 1, 1, 1], num_groups=4, z_channels=4, embed_dim=8, attn_resolutions=[],
             semantic_ch=8, semantic_ch_mult=[1, 1], semantic_out_channels=8)


def micro(**overrides) -> tt.TokenizerTrainConfig:
    """A 32×64 run of a few steps with a PatchGAN that starts at step 1 (offline-safe terms)."""
    base = dict(tokenizer_overrides=MICRO, num_images=16, image_width=64, batch_size=4, steps=4,
                warmup=2, lr_decay_every=3, log_every=1, image_every=2, save_every=2,
                loss=dict(lpips_weight=0.0, disc_type="patchgan", patchgan_channels=8,
                          patchgan_layers=2, disc_start=1, semantic_weight=0.0, reduction="mean"))
    return tt.TokenizerTrainConfig.preset("tiny", **{**base, **overrides})


def run(cfg, out, **kw):
    return tt.train(cfg, out, device="cpu", progress=False, **kw)


def test_resume_is_bit_exact(tmp_path):
    straight = read_checkpoint(run(micro(steps=4), tmp_path / "a"))
    first = run(micro(steps=2), tmp_path / "b")
    resumed = read_checkpoint(run(micro(steps=4), tmp_path / "b", resume=first))
    assert straight["train_state"]["step"] == resumed["train_state"]["step"] == 4
    for key in ("state_dict", "ema_state_dict", "discriminator"):
        assert straight[key].keys() == resumed[key].keys()
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}.{name} differs after resume"
    # Logging, images and a loadable EMA model come with every run.
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count("\n") == 4
    assert (tmp_path / "a" / "images" / "recon_0000002.png").is_file()
    tok = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert isinstance(tok, ColumnTokenizer) and not tok.training
    ema = straight["ema_state_dict"]
    assert all(torch.equal(v, ema[k]) for k, v in tok.state_dict().items())
    assert not torch.equal(ema["decoder.conv_out.weight"], straight["state_dict"]["decoder.conv_out.weight"])


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    original = TokenizerLoss.generator_loss

    def poisoned(self, x, out, step, last_layer=None):
        logs = original(self, x, out, step, last_layer)
        if step == 3:
            logs["loss"] = logs["loss"] * float("nan")
        return logs

    monkeypatch.setattr(TokenizerLoss, "generator_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3") as err:
        run(micro(steps=6), tmp_path)
    ckpt = tmp_path / "checkpoint.pt"
    assert str(ckpt) in str(err.value)
    saved = read_checkpoint(ckpt)
    assert saved["train_state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values() if v.is_floating_point())


def test_stage2_starts_from_ema_and_trains_only_the_decoder(tmp_path):
    stage1 = read_checkpoint(run(micro(steps=2), tmp_path / "s1"))
    init = str(tmp_path / "s1" / "checkpoint.pt")
    start = read_checkpoint(run(micro(stage=2, init=init, steps=0), tmp_path / "s2_start"))
    for name, value in stage1["ema_state_dict"].items():
        assert torch.equal(start["state_dict"][name], value), f"stage 2 did not start from EMA {name}"

    end = read_checkpoint(run(micro(stage=2, init=init, steps=3), tmp_path / "s2"))
    frozen = [k for k in end["state_dict"] if k.startswith(("encoder.", "quant_layer.", "semantic_decoder."))]
    trained = [k for k in end["state_dict"] if k.startswith(("decoder.", "post_quant_layer."))]
    assert frozen and trained
    for k in frozen:
        assert torch.equal(end["state_dict"][k], stage1["ema_state_dict"][k]), f"{k} changed in stage 2"
    assert any(not torch.equal(end["state_dict"][k], stage1["ema_state_dict"][k]) for k in trained)
    assert end["train_config"]["stage"] == 2
    with pytest.raises(ValueError, match="--init"):
        micro(stage=2)


def test_cli_builds_the_config_from_preset_and_flags(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(tt, "train", lambda cfg, out, **kw: seen.update(cfg=cfg, out=out) or out)
    tt.main(["--preset", "paper", "--out", str(tmp_path), "--steps", "7", "--disc_type", "patchgan",
             "--semantic_start", "3", "--grad_clip", "0"])
    cfg = seen["cfg"]
    assert cfg.steps == 7 and cfg.grad_clip == 0 and cfg.lr == 1.92e-4 and cfg.batch_size == 192
    assert cfg.loss.disc_type == "patchgan" and cfg.loss.semantic_start == 3
    assert cfg.loss.disc_start == 5000 and cfg.loss.semantic_weight == 5.0
    tiny = tt.TokenizerTrainConfig.preset("tiny")
    assert tt.TokenizerTrainConfig.from_dict(tiny.to_dict()) == tiny


def test_cache_latents_with_flips(tmp_path):
    torch.manual_seed(0)
    tok = ColumnTokenizer(TokenizerConfig.preset("tiny", **MICRO))
    data = SynthScapes(6, height=32, width=64)
    path = cache_latents(tok, data, tmp_path / "latents.pt", flips=True, batch_size=4,
                         show_progress=False)
    blob = torch.load(path, weights_only=True)
    latents, labels = blob["latents"], blob["labels"]
    assert latents.shape == (12, 8, 8) and latents.dtype == torch.float32
    assert torch.equal(labels, torch.cat([data.labels, data.labels]))
    images = torch.stack([data[i][0] for i in range(6)])
    with torch.no_grad():
        torch.testing.assert_close(latents[:6], tok.encode(images), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(latents[6:], tok.encode(images.flip(-1)), atol=1e-5, rtol=1e-5)
    assert blob["noise_std"] == 2.5 and blob["tokenizer_config"]["embed_dim"] == 8
    plain = torch.load(cache_latents(tok, data, tmp_path / "plain.pt", flips=False,
                                     show_progress=False), weights_only=True)
    assert plain["latents"].shape == (6, 8, 8)


def test_course_helpers_load_existing_artifacts(tmp_path, monkeypatch):
    from minieq import course
    from minieq.checkpoint import save_checkpoint

    monkeypatch.delenv("MINIEQ_FAST", raising=False)
    assert course.is_fast() and course.is_fast(True) and not course.is_fast(False)
    monkeypatch.setenv("MINIEQ_FAST", "0")
    assert not course.is_fast() and course.scratch_tokenizer_config().steps > course.scratch_tokenizer_config(True).steps
    fast = course.scratch_tokenizer_config(True)
    assert fast.loss.disc_type == "none" and fast.loss.lpips_weight == 0 and fast.data == "synthscapes"

    tok = ColumnTokenizer(TokenizerConfig.preset("tiny", **MICRO))
    save_checkpoint(tmp_path / "tokenizer.pt", tok)
    monkeypatch.setattr(course, "train_tokenizer", lambda *a, **k: pytest.fail("must not retrain"))
    loaded = course.scratch_tokenizer(tmp_path)
    assert not loaded.training
    assert all(torch.equal(v, tok.state_dict()[k]) for k, v in loaded.state_dict().items())
    (tmp_path / "latents.pt").write_bytes(b"already here")
    assert course.scratch_latents(loaded, tmp_path) == tmp_path / "latents.pt"


def test_course_fast_and_full_never_share_files(tmp_path, monkeypatch):
    from minieq import course
    from minieq.checkpoint import CheckpointError, save_checkpoint

    assert course.course_dir(True) != course.course_dir(False)
    monkeypatch.setenv("MINIEQ_FAST", "0")
    assert course.course_dir() == Path("runs/course/full")
    # A FAST artifact found where full mode looks is refused, not silently reused.
    tok = ColumnTokenizer(TokenizerConfig.preset("tiny", **MICRO))
    save_checkpoint(tmp_path / "tokenizer.pt", tok, train_config=course.scratch_tokenizer_config(True).to_dict())
    monkeypatch.setattr(course, "train_tokenizer", lambda *a, **k: pytest.fail("must not retrain"))
    assert course.scratch_tokenizer(tmp_path, fast=True) is not None
    with pytest.raises(CheckpointError, match="full mode"):
        course.scratch_tokenizer(tmp_path, fast=False)
