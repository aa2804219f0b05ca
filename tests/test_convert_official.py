"""python -m minieq.convert_official on official-format files (the parity fixtures): the converted
minieq checkpoints compute what the official loaders give, and sample from the command line."""
import json
import os
from pathlib import PurePosixPath

import numpy as np
import pytest
import torch

from minieq import Pipeline, convert_official, load_checkpoint, load_official_generator, load_official_tokenizer
from minieq import sample
from minieq.checkpoint import CheckpointError, read_checkpoint
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig


def golden_files(parity_dir):
    files = {n: parity_dir / f for n, f in (("tok", "public_tokenizer.ckpt"), ("gen", "public_generator.pth"),
                                             ("config", "public_config.json"))}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        pytest.skip(f"official parity fixtures missing: {missing}")
    return files


def test_convert_writes_minieq_checkpoints_that_match_the_official_loaders(parity_dir, tmp_path, capsys):
    g = golden_files(parity_dir)
    out = tmp_path / "official"
    assert convert_official.main(["--tokenizer", str(g["tok"]), "--generator", str(g["gen"]),
                                  "--tokenizer_config", str(g["config"]), "--generator_args", str(g["config"]),
                                  "--out", str(out)]) == 0
    assert "python -m minieq.sample --tokenizer" in capsys.readouterr().out
    config = json.loads(g["config"].read_text())
    gen_ckpt = read_checkpoint(out / "generator.pt", expect="Generator")
    assert gen_ckpt["latent_scale"] == pytest.approx(0.05493) and gen_ckpt["train_tokens"] == 16
    assert gen_ckpt["class_names"] is None and gen_ckpt["converted_from"] == "public_generator.pth"
    assert read_checkpoint(out / "tokenizer.pt", expect="ColumnTokenizer")["converted_from"] == "public_tokenizer.ckpt"

    # The converted weights are the official EMA weights: same outputs as the official loaders.
    tok, ref_tok = load_checkpoint(out / "tokenizer.pt"), load_official_tokenizer(g["tok"], config["tokenizer"])
    gen, ref_gen = load_checkpoint(out / "generator.pt"), load_official_generator(g["gen"], config["generator"])
    x = torch.rand(1, 3, 256, 48) * 2 - 1
    with torch.no_grad():
        assert torch.equal(tok.encode(x), ref_tok.encode(x))
        tokens, labels = torch.randn(2, 5, 8), torch.tensor([0, 9])
        assert torch.equal(gen.condition(tokens, labels), ref_gen.condition(tokens, labels))

    pipe = Pipeline.from_checkpoints(out / "tokenizer.pt", out / "generator.pt")
    assert pipe.latent_scale == pytest.approx(0.05493) and pipe.train_width == 256
    assert sample.main(["--tokenizer", str(out / "tokenizer.pt"), "--generator", str(out / "generator.pt"),
                        "--classes", "0", "9", "--width", "64", "--steps", "2", "--seed", "0",
                        "--device", "cpu", "--out", str(tmp_path / "s.png")]) == 0
    assert "2 image(s) of 256×64 px" in capsys.readouterr().out


def test_convert_mistakes_are_one_line(parity_dir, tmp_path, capsys):
    g = golden_files(parity_dir)
    cases = [([], "give --tokenizer and/or --generator"),
             (["--generator", str(g["tok"])], "expected an official generator checkpoint"),
             # The released places_large config does not fit the small fixture: keys are listed.
             (["--generator", str(g["gen"])], "weights do not match the model"),
             (["--tokenizer", str(g["tok"]), "--tokenizer_config", str(tmp_path / "none.json")],
              "not a readable JSON file")]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            convert_official.main([*argv, "--out", str(tmp_path / "o")])
        assert exit_.value.code == 2 and message in capsys.readouterr().err, argv
    assert not (tmp_path / "o").exists()


def test_the_converter_runs_on_official_format_files_without_the_fixtures(tmp_path, monkeypatch, capsys):
    """The same path on small random files in the official formats (tests/official_format.py), so a
    clean clone without the parity fixtures runs it too: the converter takes the EMA weights, and
    the converted folder is what Pipeline.from_checkpoints and the course (notebook 08) take."""
    from minieq import course
    from official_format import GENERATOR_ARGS, main as write_and_convert, write_release

    assert write_and_convert([str(tmp_path)]) == 0
    raw = torch.load(tmp_path / "raw" / "places_large.pth", weights_only=False)
    gen = load_checkpoint(tmp_path / "generator.pt")
    for name, value in raw["model_ema"].items():
        ours = name.replace("diffloss.net.", "head.net.")
        assert torch.equal(gen.state_dict()[ours], value), name  # the EMA weights, not the live ones
    assert gen.config.num_classes == GENERATOR_ARGS["class_num"] and gen.config.depth == 2

    monkeypatch.delenv(course.OFFICIAL_ENV, raising=False)
    assert course.official_dir(tmp_path) is None  # opt-in: an existing folder is not picked up by itself
    monkeypatch.setenv(course.OFFICIAL_ENV, tmp_path.name)
    assert course.official_dir(tmp_path.parent) == tmp_path
    pipe = course.official_pipeline(tmp_path, device="cpu")
    assert pipe.latent_scale == pytest.approx(0.05493) and pipe.train_width == 256 and pipe.class_names is None
    images = pipe.generate([0, 29], width=48, cfg=7.0, solver="midpoint", steps=1, seed=0)
    assert images.shape == (2, 3, 256, 48) and torch.isfinite(images).all()

    write_release(tmp_path / "unconverted")  # official files only: the converter has not run there
    with pytest.raises(FileNotFoundError, match="unconverted/tokenizer.pt not found: convert the release first"):
        course.official_pipeline(tmp_path / "unconverted")


class TrainingExtra:
    """Stands for a class of the official training code inside a checkpoint: a load must not run it."""
    ran = False

    def __setstate__(self, state):
        TrainingExtra.ran = True
        self.__dict__.update(state)


class RunsACommand:
    """An object whose unpickling would run a shell command."""

    def __init__(self, mark):
        self.mark = mark

    def __reduce__(self):
        return os.system, (f"touch {self.mark}",)


def test_official_files_with_training_extras_load_without_running_them(tmp_path):
    from official_format import TOKENIZER_PARAMS, write_official_tokenizer

    torch.manual_seed(0)
    tok = ColumnTokenizer(TokenizerConfig.from_official(TOKENIZER_PARAMS)).eval()
    extra = TrainingExtra()
    extra.settings = {"lr": 1e-4}
    # What a Lightning file may hold besides the weights, and the official code loads with
    # weights_only=False: callback states keyed by the callback class (Lightning 1.4, the official
    # version) with paths and numpy scalars, pickled config objects.
    extras = dict(callbacks={TrainingExtra: {"dirpath": PurePosixPath("/logs"), "best": np.float64(0.5)}},
                  hyper_parameters=extra)
    path = write_official_tokenizer(tok, tmp_path / "tokenizer.ckpt", **extras)
    TrainingExtra.ran = False
    loaded = load_official_tokenizer(path, TOKENIZER_PARAMS)
    assert not TrainingExtra.ran  # the placeholder took its state, the class's code never ran
    x = torch.rand(1, 3, 256, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), tok.encode(x))

    # A placeholder where a weight should be is refused in one line.
    state = torch.load(path, weights_only=False)
    state["state_dict"]["ema_quant_layer.weight"] = TrainingExtra()
    torch.save(state, tmp_path / "odd.ckpt")
    with pytest.raises(CheckpointError, match=r"weights that are not tensors \(1\): \['quant_layer.weight'\]"):
        load_official_tokenizer(tmp_path / "odd.ckpt", TOKENIZER_PARAMS)

    # Globals of os / sys are refused outright, and nothing runs.
    mark = tmp_path / "ran"
    bad = write_official_tokenizer(tok, tmp_path / "bad.ckpt", callbacks=RunsACommand(mark))
    with pytest.raises(CheckpointError, match="not allowed in a safe .weights_only. load.*is blocked"):
        load_official_tokenizer(bad, TOKENIZER_PARAMS)
    assert not mark.exists()
