"""make demo end to end on micro models: pretrained and from-scratch models side by side."""
import json

import torch

from minieq import pretrained
from minieq.course import demo
from minieq.checkpoint import save_checkpoint
from minieq.generator import Generator, GeneratorConfig
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig

MICRO = dict(ch=8, ch_mult=[1, 1, 1, 1], num_groups=4, z_channels=4, embed_dim=8, attn_resolutions=[],
             semantic_ch=8, semantic_ch_mult=[1, 1], semantic_out_channels=8)
MICRO_GEN = dict(token_dim=8, embed_dim=16, depth=1, num_heads=2, head_width=16, head_depth=1,
                 num_sampling_steps=2)


def _micro_models(seed: int):
    torch.manual_seed(seed)
    return (ColumnTokenizer(TokenizerConfig.preset("tiny", **MICRO)).eval(),
            Generator(GeneratorConfig.preset("tiny", **MICRO_GEN)).eval())


def test_demo_shows_pretrained_and_scratch_models_labelled(tmp_path, monkeypatch):
    tok, gen = _micro_models(0)
    save_checkpoint(tmp_path / "tok.pt", tok.half(), step=7, train_config={}, heldout={})
    save_checkpoint(tmp_path / "gen.pt", gen.half(), step=5, latent_scale=0.5, train_config={})
    monkeypatch.setattr(pretrained, "TOKENIZER_FILE", tmp_path / "tok.pt")
    monkeypatch.setattr(pretrained, "TEXTURED_FILE", tmp_path / "tok.pt")
    monkeypatch.setattr(pretrained, "GENERATOR_FILE", tmp_path / "gen.pt")
    scratch_tok, scratch_gen = _micro_models(1)
    monkeypatch.setattr(demo, "scratch_tokenizer", lambda *a, **k: scratch_tok)
    monkeypatch.setattr(demo, "scratch_latents", lambda *a, **k: tmp_path / "latents.pt")
    monkeypatch.setattr(demo, "scratch_generator", lambda *a, **k: (scratch_gen, 2.0))

    from minieq.course.demo import main

    out = tmp_path / "demo"
    summary = main(["--out", str(out), "--fd_images", "16"])
    assert set(summary["models"]) == {"pretrained", "scratch"}
    assert "7 steps" in summary["models"]["pretrained"]["label"]
    assert summary["models"]["pretrained"]["latent_scale"] == 0.5
    assert summary["models"]["scratch"]["latent_scale"] == 2.0
    for figure in ("reconstructions", "token_by_token", "samples_by_class", "regeneration"):
        for model in ("", "_pretrained", "_scratch"):
            assert (out / f"{figure}{model}.png").stat().st_size > 0
    assert (out / "long_64x_pretrained_forest.png").is_file()  # long strips from the default model
    assert not list(out.glob("long_*_scratch_*.png"))
    fd = summary["fd_lite0"]
    assert {"held-out renders (floor)", "PCA column codec", "pretrained samples (cfg 3)",
            "scratch tokenizer reconstructions"} <= set(fd)
    assert json.loads((out / "summary.json").read_text()) == summary


def test_demo_without_pretrained_models_shows_the_scratch_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pretrained, "TOKENIZER_FILE", tmp_path / "absent.pt")
    monkeypatch.setattr(pretrained, "TEXTURED_FILE", tmp_path / "absent.pt")
    scratch_tok, scratch_gen = _micro_models(1)
    monkeypatch.setattr(demo, "scratch_tokenizer", lambda *a, **k: scratch_tok)
    monkeypatch.setattr(demo, "scratch_latents", lambda *a, **k: tmp_path / "latents.pt")
    monkeypatch.setattr(demo, "scratch_generator", lambda *a, **k: (scratch_gen, 2.0))

    from minieq.course.demo import main

    summary = main(["--out", str(tmp_path / "demo"), "--fd_images", "16"])
    assert set(summary["models"]) == {"scratch"}
    assert "not available" in capsys.readouterr().out
    assert (tmp_path / "demo" / "long_64x_scratch_forest.png").is_file()
