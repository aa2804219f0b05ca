"""The two trainers share one signature, one field vocabulary and one set of preset names; files
written before the renames still load; the width rule and the data-set registry are single."""
import argparse
import inspect

import pytest
import torch

import minieq.train_generator as tg
import minieq.train_tokenizer as tt
from minieq import course, data
from minieq.checkpoint import read_checkpoint, save_checkpoint
from minieq.config import add_dataclass_args, overrides_from_args, token_columns
from minieq.pipeline import Pipeline
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig

SHARED_FIELDS = ("steps", "batch_size", "save_every", "bf16", "log_every", "seed", "num_workers")


def test_both_trainers_have_one_signature():
    tok, gen = inspect.signature(tt.train), inspect.signature(tg.train)
    assert list(tok.parameters) == list(gen.parameters) == [
        "cfg", "out", "resume", "fresh", "device", "progress"]
    for name in ("resume", "fresh", "device", "progress"):
        assert tok.parameters[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert tok.parameters[name].default == gen.parameters[name].default


def test_both_configs_share_field_names_and_preset_names():
    tok_fields = set(tt.TokenizerTrainConfig.__dataclass_fields__)
    gen_fields = set(tg.GeneratorTrainConfig.__dataclass_fields__)
    assert set(SHARED_FIELDS) <= tok_fields & gen_fields
    assert not {"max_steps", "global_batch", "ckpt_every", "amp", "out", "resume"} & (tok_fields | gen_fields)
    # Stage 2 (decoder fine-tuning) exists for the tokenizer only: its one extra preset.
    assert set(tt.TokenizerTrainConfig.PRESETS) - {"pretrained_texture"} == set(tg.GeneratorTrainConfig.PRESETS) == {
        "fast", "tiny", "pretrained", "course_gpu", "paper"}
    # "tiny" is the tiny model at full size in both, not the FAST model.
    assert tt.TokenizerTrainConfig.preset("tiny").tokenizer_overrides == {}
    assert tg.GeneratorTrainConfig.preset("tiny").model_overrides == {}
    assert tg.GeneratorTrainConfig.preset("fast") != tg.GeneratorTrainConfig.preset("tiny")
    # minieq.course trains the trainers' presets of the same names.
    for fast, name in ((True, "fast"), (False, "course_gpu")):
        assert course.scratch_tokenizer_config(fast) == tt.TokenizerTrainConfig.preset(name)
        assert course.scratch_generator_config(fast) == tg.GeneratorTrainConfig.preset(name)
    assert not hasattr(course, "TOKENIZER_RECIPES") and not hasattr(course, "GENERATOR_RECIPES")


def test_configs_stored_before_the_rename_load_with_the_new_names():
    old_tok = {**tt.TokenizerTrainConfig.preset("fast").to_dict(), "amp": False, "ckpt_every": 7}
    del old_tok["bf16"], old_tok["save_every"]
    tok = tt.TokenizerTrainConfig.from_dict(old_tok)
    assert (tok.bf16, tok.save_every) == (False, 7)
    old_gen = {**tg.GeneratorTrainConfig.preset("fast").to_dict(), "max_steps": 9, "global_batch": 16,
               "out": "runs/gen", "resume": True}
    del old_gen["steps"], old_gen["batch_size"]
    gen = tg.GeneratorTrainConfig.from_dict(old_gen)
    assert (gen.steps, gen.batch_size) == (9, 16)
    assert gen == tg.GeneratorTrainConfig.preset("fast", steps=9, batch_size=16)
    with pytest.raises(ValueError, match="unknown fields"):
        tg.GeneratorTrainConfig.from_dict({"max_stepz": 3})


def test_old_flag_spellings_stay_accepted(tmp_path):
    for cls, argv, expected in ((tg.GeneratorTrainConfig, ["--max_steps", "5", "--global_batch", "4"],
                                 {"steps": 5, "batch_size": 4}),
                                (tt.TokenizerTrainConfig, ["--ckpt_every", "3", "--amp", "false"],
                                 {"save_every": 3, "bf16": False})):
        parser = argparse.ArgumentParser()
        add_dataclass_args(parser, cls)
        assert overrides_from_args(parser.parse_args(argv), cls) == expected


def test_a_course_artifact_saved_with_the_old_names_is_reused(tmp_path, monkeypatch):
    """A FAST tokenizer saved before the rename (train_config with amp/ckpt_every) is not refused."""
    stored = tt.TokenizerTrainConfig.preset("fast").to_dict()
    stored["amp"], stored["ckpt_every"] = stored.pop("bf16"), stored.pop("save_every")
    tok = ColumnTokenizer(TokenizerConfig.preset("tiny", ch=16, semantic_ch=16))
    save_checkpoint(tmp_path / "tokenizer.pt", tok, train_config=stored)
    monkeypatch.setattr(course, "train_tokenizer", lambda *a, **k: pytest.fail("must not retrain"))
    loaded = course.scratch_tokenizer(tmp_path, fast=True, device="cpu")
    assert torch.equal(loaded.quant_layer.weight, tok.quant_layer.weight)
    assert "amp" in read_checkpoint(tmp_path / "tokenizer.pt")["train_config"]  # the file is untouched


def test_one_width_rule_for_tokenizer_pipeline_and_data(micro_pipe):
    assert token_columns(128, 8) == 16 and token_columns(16, 8) == 2
    messages = []
    for call in (lambda: token_columns(100, 8),
                 lambda: data.check_image_size(torch.zeros(1, 3, 32, 100), 32, 8),
                 lambda: ColumnTokenizer(TokenizerConfig.preset("tiny")).eval().encode(torch.zeros(1, 3, 32, 100))):
        with pytest.raises(ValueError) as err:
            call()
        messages.append(str(err.value))
    assert len(set(messages)) == 1
    pipe: Pipeline = micro_pipe
    width = 3 * pipe.column_width + 1
    with pytest.raises(ValueError, match=f"image width {width} must be a multiple of the column width"):
        pipe.num_tokens(width)
    with pytest.raises(ValueError, match="must be a multiple of the column width 8"):
        tt.build_dataset(tt.TokenizerTrainConfig.preset("fast", image_width=100),
                         TokenizerConfig.preset("tiny"))


def test_one_registry_of_data_set_names_feeds_the_help():
    assert data.DATASETS == ("synthscapes", *data.IMAGE_FOLDERS)
    assert data.dataset_names() == "synthscapes, imagenet, places30, lhq or folder"
    for help_text in (tt.TokenizerTrainConfig.HELP["data"], tg.GeneratorTrainConfig.HELP["data"]):
        assert data.dataset_names() in help_text
    with pytest.raises(ValueError, match="choose one of synthscapes, imagenet, places30, lhq"):
        data.build_dataset("cifar")
