"""Pretrained course models: the export round trip (micro run) and the files shipped in the package."""
import pytest
import torch

import minieq.train_tokenizer as tt
from minieq import evaluation, pretrained
from minieq.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from minieq.tokenizer import ColumnTokenizer

MICRO = dict(ch=8, ch_mult=[1, 1, 1, 1], num_groups=4, z_channels=4, embed_dim=8, attn_resolutions=[],
             semantic_ch=8, semantic_ch_mult=[1, 1], semantic_out_channels=8)
MAX_PACKAGE_BYTES = 12 * 2 ** 20  # every shipped file together


def _float_tensors(ckpt: dict) -> list[torch.Tensor]:
    return [v for v in ckpt["state_dict"].values() if v.is_floating_point()]


def test_export_stores_half_weights_recipe_and_reproducible_psnr(tmp_path, monkeypatch):
    micro = {**tt.TokenizerTrainConfig.PRESETS["tiny"], **dict(
        tokenizer_overrides=MICRO, num_images=16, batch_size=4, steps=2, warmup=1, log_every=1,
        image_every=0, save_every=1)}
    monkeypatch.setitem(tt.TokenizerTrainConfig.PRESETS, "pretrained", micro)
    out = tmp_path / "course_tokenizer.pt"
    meta = pretrained.main(["tokenizer", "--out", str(tmp_path / "run"), "--export", str(out)])

    raw = torch.load(out, map_location="cpu", weights_only=True)  # plain containers only
    assert all(t.dtype == torch.float16 for t in _float_tensors(raw))
    assert raw["train_config"] == tt.TokenizerTrainConfig.preset("pretrained").to_dict()
    assert raw["step"] == 2 and raw["command"].startswith("python -m minieq.pretrained tokenizer")
    assert raw["heldout"] == meta["heldout"] and raw["heldout"]["images"] == evaluation.HELDOUT_IMAGES

    monkeypatch.setattr(pretrained, "TOKENIZER_FILE", out)
    tok = pretrained.pretrained_tokenizer(device="cpu", decoder="stage1")
    assert isinstance(tok, ColumnTokenizer) and not tok.training
    assert all(p.dtype == torch.float32 for p in tok.parameters())
    again = evaluation.evaluate_tokenizer(tok)
    assert abs(again["psnr_db"] - raw["heldout"]["psnr_db"]) < 0.05

    # A rerun resumes the finished run (no step is trained twice) and exports the same weights.
    pretrained.main(["tokenizer", "--out", str(tmp_path / "run"), "--export", str(out)])
    rerun = read_checkpoint(out)
    assert rerun["step"] == 2
    assert all(torch.equal(v, raw["state_dict"][k]) for k, v in rerun["state_dict"].items())


def test_export_of_a_generator_run_keeps_its_latent_scale(tmp_path, monkeypatch):
    from minieq.generator import Generator, GeneratorConfig

    gen = Generator(GeneratorConfig.preset("tiny", embed_dim=16, depth=1, num_heads=2, head_width=16,
                                           head_depth=1))
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in gen.state_dict().items()}
    run = save_checkpoint(tmp_path / "run.pt", gen, ema_state_dict=ema, train_state={"step": 3},
                          train_config={"max_steps": 3}, latent_scale=0.25)
    out = tmp_path / "course_generator.pt"
    pretrained.export(run, out, "python -m minieq.pretrained generator", latents={"flips": True})
    monkeypatch.setattr(pretrained, "GENERATOR_FILE", out)
    loaded, scale = pretrained.pretrained_generator(device="cpu", few_step=False)
    assert scale == 0.25 and read_checkpoint(out)["step"] == 3
    assert read_checkpoint(out)["latents"] == {"flips": True}
    for name, value in loaded.state_dict().items():  # the EMA weights, rounded to half precision
        torch.testing.assert_close(value, ema[name].half().to(value.dtype))
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        pretrained.export(out, tmp_path / "again.pt", "x")


def test_missing_pretrained_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "TOKENIZER_FILE", tmp_path / "course_tokenizer.pt")
    monkeypatch.setattr(pretrained, "TEXTURED_FILE", tmp_path / "course_tokenizer_textured.pt")
    with pytest.raises(CheckpointError, match="not in this installation.*pretrained tokenizer"):
        pretrained.pretrained_tokenizer(device="cpu", decoder="stage1")
    with pytest.raises(CheckpointError, match="not in this installation.*pretrained textured"):
        pretrained.pretrained_tokenizer(device="cpu")


SHIPPED = [pretrained.TOKENIZER_FILE, pretrained.GENERATOR_FILE, pretrained.TEXTURED_FILE]


@pytest.mark.skipif(not all(p.is_file() for p in SHIPPED),
                    reason="the pretrained course models are not shipped in this checkout yet")
def test_shipped_course_models():
    from minieq.train_generator import GeneratorTrainConfig

    assert sum(p.stat().st_size for p in SHIPPED) <= MAX_PACKAGE_BYTES
    tok_ckpt = torch.load(pretrained.TOKENIZER_FILE, map_location="cpu", weights_only=True)
    gen_ckpt = torch.load(pretrained.GENERATOR_FILE, map_location="cpu", weights_only=True)
    for ckpt in (tok_ckpt, gen_ckpt):
        assert all(t.dtype == torch.float16 for t in _float_tensors(ckpt))
        assert ckpt["command"].startswith("python -m minieq.pretrained")
    # The recipe in the file is the preset's, trained to its end: one command reproduces it.
    tok_cfg = tok_ckpt["train_config"]
    assert tt.TokenizerTrainConfig.from_dict(tok_cfg) == tt.TokenizerTrainConfig.preset("pretrained", steps=tok_cfg["steps"])
    assert tok_ckpt["step"] == tok_cfg["steps"] and "seed" in tok_cfg
    gen_cfg = GeneratorTrainConfig.from_dict(gen_ckpt["train_config"])
    assert gen_ckpt["step"] == gen_cfg.steps and gen_ckpt["latent_scale"] > 0
    assert gen_ckpt["latents"]["tokenizer_step"] == tok_ckpt["step"]

    tok = pretrained.pretrained_tokenizer(device="cpu", decoder="stage1")
    measured = evaluation.evaluate_tokenizer(tok)
    assert abs(measured["psnr_db"] - tok_ckpt["heldout"]["psnr_db"]) < 0.05
    gen, scale = pretrained.pretrained_generator(device="cpu")
    assert scale == gen_ckpt["latent_scale"] and not gen.training
    assert gen.config.token_dim == tok.config.embed_dim


@pytest.mark.skipif(not all(p.is_file() for p in SHIPPED),
                    reason="the pretrained course models are not shipped in this checkout yet")
def test_shipped_textured_decoder():
    """The default tokenizer: the stage-1 file with only its decoder fine-tuned (Table 5), so its
    latents are bit-identical and the shipped generator stays valid; recipe and numbers inside."""
    ckpt = torch.load(pretrained.TEXTURED_FILE, map_location="cpu", weights_only=True)
    stage1 = torch.load(pretrained.TOKENIZER_FILE, map_location="cpu", weights_only=True)
    assert all(t.dtype == torch.float16 for t in _float_tensors(ckpt))
    assert ckpt["command"].startswith("python -m minieq.pretrained textured")
    cfg = tt.TokenizerTrainConfig.from_dict(ckpt["train_config"])
    assert cfg == tt.TokenizerTrainConfig.preset("pretrained_texture", steps=cfg.steps, init=cfg.init)
    assert ckpt["step"] == cfg.steps and cfg.stage == 2 and cfg.loss.perceptual == "lite1"

    trained = ("decoder.", "post_quant_layer.")  # what stage 2 trains; everything else is frozen
    changed = [k for k, v in ckpt["state_dict"].items() if not torch.equal(v, stage1["state_dict"][k])]
    assert changed and all(k.startswith(trained) for k in changed)

    tok = pretrained.pretrained_tokenizer(device="cpu")  # the default is the textured decoder
    old = pretrained.pretrained_tokenizer(device="cpu", decoder="stage1")
    x = evaluation.heldout_images(32, 128, 8, seed=1)
    assert torch.equal(tok.encode(x), old.encode(x))
    assert not torch.equal(tok.decode(tok.encode(x)), old.decode(old.encode(x)))
    measured = evaluation.evaluate_tokenizer(tok)
    for key, tolerance in (("psnr_db", 0.05), ("ssim", 0.005), ("detail_ratio", 0.01), ("hf_energy_ratio", 0.01)):
        assert abs(measured[key] - ckpt["heldout"][key]) < tolerance, key
    assert measured["psnr_db"] >= 27.0 and measured["detail_ratio"] >= 0.6  # the shipped targets
    with pytest.raises(ValueError, match="decoder must be one of"):
        pretrained.pretrained_tokenizer(device="cpu", decoder="vgg")


def _strings(value):
    """Every string inside nested dicts and lists (the metadata of a checkpoint)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


@pytest.mark.skipif(not all(p.is_file() for p in SHIPPED),
                    reason="the pretrained course models are not shipped in this checkout yet")
def test_shipped_metadata_is_relative_and_uses_the_current_field_names():
    from minieq.train_generator import GeneratorTrainConfig

    for path, cls in zip(SHIPPED, (tt.TokenizerTrainConfig, GeneratorTrainConfig, tt.TokenizerTrainConfig)):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
        absolute = [s for s in _strings(meta) if s.startswith("/") or " /" in s]
        assert not absolute, f"{path.name}: absolute paths in the metadata: {absolute}"
        stored = ckpt["train_config"]
        assert not set(stored) & set(cls.RENAMED), f"{path.name}: old field names"
        current = cls.from_dict(stored).to_dict()
        assert {k: current[k] for k in stored} == stored  # every stored field is a current one
        defaults = cls().to_dict()  # fields added since the export sit at their defaults
        assert all(current[k] == defaults[k] for k in set(current) - set(stored))


def test_shipped_few_step_head():
    """The few-step head ships with its recipe (the distill defaults: one command remakes it), fits
    the shipped generator only, and its jumps still land where the teacher's solve lands: the
    one-jump error is recomputed on fresh teacher trajectories (other seed, other images)."""
    from minieq import distill
    from minieq.few_step import FORMAT

    blob = torch.load(pretrained.FEW_STEP_FILE, map_location="cpu", weights_only=True)
    assert blob["format"] == FORMAT and blob["command"].startswith("python -m minieq.distill")
    assert distill.DistillConfig.from_dict(blob["distill_config"]) == distill.DistillConfig()
    assert all(t.dtype == torch.float16 for t in blob["state"].values())
    gen, _ = pretrained.pretrained_generator(device="cpu")
    assert gen.head.few_step is not None and not gen.head.few_step.training
    recorded = blob["history"][-1]["val"]
    cfg = distill.DistillConfig(images=16, seed=123)
    data = distill.trajectories(gen, cfg, batch=16, log=lambda *_: None)
    measured = distill.jump_errors(gen.head.few_step, data, slice(None), cfg)
    for steps, error in measured.items():
        assert error < 1.5 * recorded[steps] + 0.01, (steps, error, recorded)
    assert measured[1] < 0.1  # a jump, not the teacher's Euler-1 (relative error 0.6)
    assert sum(p.stat().st_size for p in SHIPPED + [pretrained.FEW_STEP_FILE]) <= MAX_PACKAGE_BYTES
