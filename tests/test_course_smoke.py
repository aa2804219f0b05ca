"""MINIEQ_SMOKE, the course's smoke switch (minieq.course): what it caps, that it says so, and that
nothing it trains is ever taken for a real run's model."""
from pathlib import Path

import pytest

from minieq import course
from minieq.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig
from minieq.train_tokenizer import TokenizerTrainConfig

MICRO = dict(ch=8, ch_mult=[1, 1, 1, 1], num_groups=4, z_channels=4, embed_dim=8, attn_resolutions=[],
             semantic_ch=8, semantic_ch_mult=[1, 1], semantic_out_channels=8)


@pytest.fixture
def smoke(monkeypatch):
    monkeypatch.setenv("MINIEQ_SMOKE", "1")
    monkeypatch.setattr(course, "_ANNOUNCED", set())  # each test sees the once-per-process lines


@pytest.mark.parametrize("value, on", [(None, False), ("", False), ("0", False), ("off", False),
                                       ("1", True), ("yes", True)])
def test_the_switch_is_one_environment_variable(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv("MINIEQ_SMOKE", raising=False)
    else:
        monkeypatch.setenv("MINIEQ_SMOKE", value)
    assert course.is_smoke() is on


def test_without_smoke_nothing_is_capped(capsys):
    assert course.cap(8192, 16, "images") == 8192 and course.cap([64, 256], [16], "lengths") == [64, 256]
    cfg = TokenizerTrainConfig.preset("course_gpu")
    assert course.smoke_recipe(cfg) is cfg
    with pytest.raises(AssertionError, match="two is less"):
        course.claim(2 < 1, "two is less than one")
    course.claim(1 < 2, "holds")
    assert capsys.readouterr().out == ""


def test_smoke_caps_counts_and_says_so(smoke, capsys):
    assert course.cap(8192, 16, "images") == 16
    assert course.cap(8, 16, "steps") == 8  # a number is never raised
    assert course.cap({}, {"crops": 2}, "sizes") == {"crops": 2}  # anything else is replaced
    course.claim(2 < 1, "two is less than one")  # a claim about a capped run is not checked ...
    out = capsys.readouterr().out
    assert "SMOKE: capped images: 8192 -> 16" in out and "steps" not in out
    assert "SMOKE: claim not checked: two is less than one" in out  # ... and says so


def test_smoke_recipes_keep_the_full_models_and_cap_the_run(smoke, capsys):
    tok = course.scratch_tokenizer_config(fast=False)
    full = TokenizerTrainConfig.preset("course_gpu")
    assert (tok.steps, tok.batch_size, tok.num_images) == (course.SMOKE_STEPS, course.SMOKE_BATCH, course.SMOKE_IMAGES)
    assert tok.tokenizer == full.tokenizer == "course_gpu" and tok.image_width == full.image_width
    gen = course.scratch_generator_config(fast=False)
    assert gen.model == "course_gpu" and gen.steps == course.SMOKE_STEPS and gen.batch_size == course.SMOKE_BATCH
    assert gen.model_overrides["num_sampling_steps"] == course.SMOKE_SAMPLING_STEPS and gen.num_workers == 0
    assert "SMOKE: capped the TokenizerTrainConfig recipe: steps 50000 -> 3" in capsys.readouterr().out


def test_smoke_runs_live_in_their_own_folders(monkeypatch):
    monkeypatch.delenv("MINIEQ_SMOKE", raising=False)
    real = {course.course_dir(True), course.course_dir(False)}
    monkeypatch.setenv("MINIEQ_SMOKE", "1")
    assert course.course_dir(False) == Path("runs/course/full-smoke")
    assert course.course_dir(True, root="out") == Path("out/fast-smoke")
    assert not real & {course.course_dir(True), course.course_dir(False)}


def test_a_smoke_model_is_never_taken_for_a_real_one(tmp_path, monkeypatch):
    """Even in the folder a real run reads, the recipe check refuses a SMOKE model (and back)."""
    tok = ColumnTokenizer(TokenizerConfig.preset("tiny", **MICRO))
    monkeypatch.setattr(course, "train_tokenizer", lambda *a, **k: pytest.fail("must not retrain"))
    monkeypatch.setenv("MINIEQ_SMOKE", "1")
    save_checkpoint(tmp_path / "tokenizer.pt", tok, train_config=course.scratch_tokenizer_config(False).to_dict())
    assert course.scratch_tokenizer(tmp_path, fast=False, device="cpu") is not None  # SMOKE reuses it
    monkeypatch.delenv("MINIEQ_SMOKE")
    with pytest.raises(CheckpointError, match="full mode"):
        course.scratch_tokenizer(tmp_path, fast=False, device="cpu")
    save_checkpoint(tmp_path / "tokenizer.pt", tok, train_config=course.scratch_tokenizer_config(False).to_dict())
    monkeypatch.setenv("MINIEQ_SMOKE", "1")
    with pytest.raises(CheckpointError, match="full SMOKE mode"):
        course.scratch_tokenizer(tmp_path, fast=False, device="cpu")


def test_smoke_training_runs_a_few_steps(tmp_path, smoke, monkeypatch):
    micro = {**TokenizerTrainConfig.PRESETS["fast"], "tokenizer_overrides": MICRO, "image_width": 64}
    monkeypatch.setitem(TokenizerTrainConfig.PRESETS, "micro", micro)
    monkeypatch.setitem(course.MODE_PRESETS, True, "micro")
    course.scratch_tokenizer(tmp_path, fast=True, device="cpu")
    saved = read_checkpoint(tmp_path / "tokenizer_run" / "checkpoint.pt")
    assert saved["train_state"]["step"] == course.SMOKE_STEPS
    assert read_checkpoint(tmp_path / "tokenizer.pt")["train_config"]["steps"] == course.SMOKE_STEPS


def test_smoke_samples_with_few_flow_steps(smoke, capsys):
    gen, _ = course.pretrained_generator("cpu")
    assert gen.head.num_sampling_steps == gen.config.num_sampling_steps == course.SMOKE_SAMPLING_STEPS
    assert "SMOKE: capped the flow head's steps" in capsys.readouterr().out


def test_pretrained_generator_samples_as_shipped_without_smoke():
    gen, _ = course.pretrained_generator("cpu")
    assert gen.head.num_sampling_steps == gen.config.num_sampling_steps > course.SMOKE_SAMPLING_STEPS
