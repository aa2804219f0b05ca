"""The course_gpu scale (full mode on one GPU): two CPU steps of each trainer, and the estimates."""
import math

import pytest
import torch

from minieq.cache_latents import cache_latents
from minieq.checkpoint import load_checkpoint, read_checkpoint
from minieq.data import SynthScapes
from minieq.estimate import estimate_generator, estimate_tokenizer
from minieq.generator import GeneratorConfig
from minieq.logger import read_jsonl
from minieq.tokenizer import TokenizerConfig
from minieq.train_generator import GeneratorTrainConfig
from minieq.train_generator import train as train_generator
from minieq.train_tokenizer import TokenizerTrainConfig
from minieq.train_tokenizer import train as train_tokenizer
from minieq.utils import count_parameters


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    """Two steps of batch 2 of the course_gpu tokenizer preset (the model at full size)."""
    out = tmp_path_factory.mktemp("tok")
    cfg = TokenizerTrainConfig.preset("course_gpu", num_images=2, batch_size=2, steps=2,
                                      log_every=1, image_every=0, save_every=2)
    return train_tokenizer(cfg, out, device="cpu", progress=False)


@pytest.fixture(scope="module")
def tokenizer(tokenizer_run):
    return load_checkpoint(tokenizer_run)


def test_course_gpu_presets_keep_the_paper_shapes():
    tok, paper = TokenizerConfig.preset("course_gpu"), TokenizerConfig.preset("paper")
    run = TokenizerTrainConfig.preset("course_gpu")
    assert tok.image_height // tok.column_width == paper.image_height // paper.column_width == 16
    assert tok.final_height == paper.final_height and run.image_width // tok.column_width == 16
    # The generator's preset reads this tokenizer's tokens.
    gen = GeneratorConfig.preset(GeneratorTrainConfig.preset("course_gpu").model)
    assert gen.token_dim == tok.embed_dim and gen.num_classes == 8


def test_course_gpu_tokenizer_trains_on_cpu(tokenizer_run, tokenizer):
    rows = read_jsonl(tokenizer_run.parent / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    assert tokenizer.config == TokenizerConfig.preset("course_gpu")
    with torch.no_grad():
        z = tokenizer.encode(torch.zeros(1, 3, 128, 128))
        assert z.shape == (1, 16, 64) and tokenizer.decode(z).shape == (1, 3, 128, 128)


def test_course_gpu_generator_trains_on_cpu(tokenizer, tmp_path):
    latents = cache_latents(tokenizer, SynthScapes(2, height=128, width=128), tmp_path / "latents.pt",
                            show_progress=False)  # 2 images + flips = 4 rows of (16, 64)
    cfg = GeneratorTrainConfig.preset("course_gpu", latents=str(latents), num_classes=8, batch_size=2,
                                      steps=2, num_workers=0, log_every=1, save_every=2)
    ckpt = read_checkpoint(train_generator(cfg, tmp_path / "gen", device="cpu", progress=False))
    assert ckpt["train_state"]["step"] == 2 and ckpt["latent_scale"] > 0
    assert ckpt["config"] == GeneratorConfig.preset("course_gpu").to_dict()
    rows = read_jsonl(tmp_path / "gen" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)


def test_course_gpu_estimates_fit_about_an_a100_hour(tokenizer):
    tok = estimate_tokenizer(TokenizerTrainConfig.preset("course_gpu"))
    # The semantic head is off offline: neither trained nor counted.
    assert tok.params == count_parameters(tokenizer) - count_parameters(tokenizer.semantic_decoder)
    gen = estimate_generator(GeneratorTrainConfig.preset("course_gpu"), token_dim=64, num_classes=8,
                             num_samples=2 * 32768)
    assert round(tok.params / 1e6, 1) == 24.7 and round(gen.params / 1e6, 1) == 48.5  # as documented
    assert tok.step_flops > 0 and gen.step_flops > 0
    assert 0.5 < tok.a100_hours() < 1.25 and 0.5 < gen.a100_hours() < 1.25  # at the assumed MFU


def test_estimates_scale_with_batch_and_steps():
    cfg = GeneratorTrainConfig.preset("fast")
    base = estimate_generator(cfg, token_dim=16, num_classes=8, num_samples=4096)
    assert base.steps == cfg.steps
    double_batch = estimate_generator(cfg.replace(batch_size=2 * cfg.batch_size), 16, 8, 4096)
    assert double_batch.step_flops == pytest.approx(2 * base.step_flops)
    longer = estimate_generator(cfg.replace(steps=2 * cfg.steps), 16, 8, 4096)
    assert longer.step_flops == base.step_flops
    assert longer.a100_hours() == pytest.approx(2 * base.a100_hours())
    # Without steps the epochs set the steps, as in train(): 3 epochs of 4096 // 32 steps.
    assert estimate_generator(cfg.replace(steps=None, epochs=3.0), 16, 8, 4096).steps == 3 * 128
