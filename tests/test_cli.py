"""The command lines as a user meets them: rerun resumes, exit codes, one-line errors, help text."""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import minieq.train_generator as tg
import minieq.train_tokenizer as tt
from minieq import cache_latents, sample
from minieq.checkpoint import read_checkpoint, save_checkpoint
from minieq.generator import Generator, GeneratorConfig
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig

TOK_MICRO = dict(tokenizer_overrides=dict(ch=8, ch_mult=[1, 1, 1, 1], num_groups=4, z_channels=4, embed_dim=8,
                                          attn_resolutions=[], semantic_ch=8, semantic_ch_mult=[1, 1],
                                          semantic_out_channels=8),
                 num_images=16, image_width=64, batch_size=4, steps=4, warmup=2, lr_decay_every=3,
                 log_every=1, image_every=0, save_every=2,
                 loss=dict(lpips_weight=0.0, disc_type="patchgan", patchgan_channels=8, patchgan_layers=2,
                           disc_start=1, semantic_weight=0.0, reduction="mean"))
GEN_MICRO = dict(batch_size=8, steps=4, warmup_epochs=0.5, blr=0.05, log_every=1, save_every=2,
                 model_overrides=dict(embed_dim=32, depth=2, num_heads=2, head_width=32, head_depth=1,
                                      num_sampling_steps=2))


@pytest.fixture(autouse=True)
def micro_presets(monkeypatch):
    """A "micro" preset in each trainer, so the command lines train in a second."""
    monkeypatch.setitem(tt.TokenizerTrainConfig.PRESETS, "micro", {**tt.TokenizerTrainConfig.PRESETS["tiny"], **TOK_MICRO})
    monkeypatch.setitem(tg.GeneratorTrainConfig.PRESETS, "micro", {**tg.GeneratorTrainConfig.PRESETS["fast"], **GEN_MICRO})


@pytest.fixture
def checkpoints(tmp_path):
    """A micro tokenizer, a micro generator on its 8-channel tokens, and a latent file."""
    torch.manual_seed(0)
    tok = ColumnTokenizer(TokenizerConfig.preset("tiny", **TOK_MICRO["tokenizer_overrides"]))
    gen = Generator(GeneratorConfig.preset("tiny", token_dim=8, **GEN_MICRO["model_overrides"]))
    paths = {"tok": tmp_path / "tok.pt", "gen": tmp_path / "gen.pt", "latents": tmp_path / "latents.pt"}
    save_checkpoint(paths["tok"], tok)
    save_checkpoint(paths["gen"], gen, latent_scale=0.5)
    torch.save({"latents": 3 * torch.randn(32, 4, 8), "labels": torch.arange(32) % 8}, paths["latents"])
    return paths


def kill_at(monkeypatch, module, step):
    """Interrupt training when the loop reaches ``step`` (after the checkpoint of step 2)."""
    real = module.check_finite

    def interrupted(losses, at, checkpoint=None):
        if at == step:
            raise KeyboardInterrupt
        return real(losses, at, checkpoint)

    monkeypatch.setattr(module, "check_finite", interrupted)


def logged_steps(run_dir):
    return [json.loads(line)["step"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a, b, keys):
    for key in keys:
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name} differs"


def kill_and_rerun(module, argv, tmp_path, monkeypatch, capsys, checkpoint_name):
    """Run straight; run again, killed after the checkpoint of step 2; rerun the same command.

    Returns (straight checkpoint, resumed checkpoint, what the rerun printed)."""
    assert module.main([*argv, "--out", str(tmp_path / "straight")]) == 0
    killed = [*argv, "--out", str(tmp_path / "killed")]
    with monkeypatch.context() as m:
        kill_at(m, module, 3)
        with pytest.raises(KeyboardInterrupt):
            module.main(killed)
    assert read_checkpoint(tmp_path / "killed" / checkpoint_name)["train_state"]["step"] == 2
    capsys.readouterr()
    assert module.main(killed) == 0
    printed = capsys.readouterr().out
    return (read_checkpoint(tmp_path / "straight" / checkpoint_name),
            read_checkpoint(tmp_path / "killed" / checkpoint_name), printed)


def test_tokenizer_rerun_resumes_after_a_kill(tmp_path, monkeypatch, capsys):
    straight, resumed, printed = kill_and_rerun(tt, ["--preset", "micro", "--device", "cpu"], tmp_path,
                                                monkeypatch, capsys, "checkpoint.pt")
    assert f"resuming from {tmp_path / 'killed' / 'checkpoint.pt'} at step 2" in printed
    assert_same_weights(straight, resumed, ("state_dict", "ema_state_dict", "discriminator"))
    assert logged_steps(tmp_path / "killed") == [1, 2, 3, 4]  # rows count steps done, no duplicates


def test_generator_rerun_resumes_after_a_kill(tmp_path, monkeypatch, capsys, checkpoints):
    argv = ["--preset", "micro", "--latents", str(checkpoints["latents"]), "--device", "cpu"]
    straight, resumed, printed = kill_and_rerun(tg, argv, tmp_path, monkeypatch, capsys, "generator.pt")
    assert f"resuming from {tmp_path / 'killed' / 'generator.pt'} at step 2" in printed
    assert_same_weights(straight, resumed, ("state_dict", "ema_state_dict"))
    assert logged_steps(tmp_path / "killed") == [1, 2, 3, 4]  # rows count steps done
    assert resumed["train_tokens"] == 4  # the training length travels with the checkpoint


def test_fresh_starts_over_and_says_so(tmp_path, capsys):
    argv = ["--preset", "micro", "--out", str(tmp_path / "run"), "--device", "cpu", "--steps", "2"]
    tt.main(argv)
    capsys.readouterr()
    tt.main([*argv, "--fresh"])
    assert "fresh start at step 0 (--fresh)" in capsys.readouterr().out
    assert logged_steps(tmp_path / "run") == [1, 2]
    with pytest.raises(SystemExit) as exit_:
        tt.main([*argv, "--fresh", "--resume", str(tmp_path / "run" / "checkpoint.pt")])
    assert exit_.value.code == 2


def test_fast_presets_are_the_course_recipes():
    """The FAST course models (notebooks, make demo) are exactly `--preset fast` of each trainer."""
    from minieq import course

    assert course.scratch_tokenizer_config(fast=True) == tt.TokenizerTrainConfig.preset("fast")
    assert course.scratch_generator_config(fast=True) == tg.GeneratorTrainConfig.preset("fast")
    fast = tt.TokenizerTrainConfig.preset("fast")  # the recipe behind the stored notebook outputs
    assert (fast.tokenizer, fast.tokenizer_overrides, fast.steps, fast.batch_size, fast.lr, fast.warmup,
            fast.lr_decay_every, fast.lr_decay, fast.ema_decay, fast.num_images) == (
        "tiny", dict(ch=16, semantic_ch=16), 500, 8, 1e-3, 20, 400, 0.3, 0.99, 2048)
    gen = tg.GeneratorTrainConfig.preset("fast")
    assert (gen.model, gen.steps, gen.batch_size, gen.blr, gen.model_overrides["embed_dim"]) == (
        "tiny", 400, 32, 8e-3, 64)


def wrong_kind_cases(p, tmp_path):
    """(CLI main, argv, expected kind, file given): a checkpoint of the other kind everywhere."""
    out = str(tmp_path / "out")
    return [
        (cache_latents.main, ["--tokenizer", str(p["gen"]), "--out", out], "tokenizer", p["gen"]),
        (sample.main, ["--tokenizer", str(p["gen"]), "--generator", str(p["gen"]), "--classes", "0"],
         "tokenizer", p["gen"]),
        (sample.main, ["--tokenizer", str(p["tok"]), "--generator", str(p["tok"]), "--classes", "0"],
         "generator", p["tok"]),
        (tg.main, ["--preset", "micro", "--tokenizer", str(p["gen"]), "--out", out], "tokenizer", p["gen"]),
        (tg.main, ["--preset", "micro", "--latents", str(p["latents"]), "--resume", str(p["tok"]), "--out", out],
         "generator", p["tok"]),
        (tt.main, ["--preset", "micro", "--resume", str(p["gen"]), "--out", out], "tokenizer", p["gen"]),
        (tt.main, ["--preset", "micro", "--stage", "2", "--init", str(p["gen"]), "--out", out],
         "tokenizer", p["gen"]),
    ]


def test_a_wrong_kind_of_checkpoint_is_one_line_naming_both_kinds(tmp_path, checkpoints, capsys):
    for main, argv, kind, path in wrong_kind_cases(checkpoints, tmp_path):
        other = "generator" if kind == "tokenizer" else "tokenizer"
        with pytest.raises(SystemExit) as exit_:
            main([*argv, "--device", "cpu"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2, argv
        assert f"{path}: expected a {kind} " in err and f"holds a {other}" in err, err
        assert "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--preset", "micro", "--data", "imagenet"], "needs its root folder"),
    (["--preset", "micro", "--device", "tpu9"], "unknown device"),
    (["--preset", "micro", "--resume", "nope.pt"], "nope.pt: no such checkpoint file"),
])
def test_user_mistakes_are_usage_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        tt.main([*argv, "--out", str(tmp_path / "run")])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_missing_gpu_is_one_line(tmp_path, checkpoints, capsys):
    with pytest.raises(SystemExit) as exit_:
        cache_latents.main(["--tokenizer", str(checkpoints["tok"]), "--out", str(tmp_path / "l.pt"),
                            "--device", "cuda"])
    assert exit_.value.code == 2 and "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("main", [tt.main, tg.main, sample.main, cache_latents.main])
def test_help_names_the_module_and_explains_every_flag(main, monkeypatch):
    class Parsed(Exception):
        pass

    def capture(self, args=None, namespace=None):
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed) as got:
        main([])
    parser = got.value.args[0]
    assert parser.format_usage().startswith("usage: python -m minieq.")
    assert not [a.option_strings for a in parser._actions if not a.help]


def test_trainers_share_the_flag_vocabulary(capsys):
    texts = {}
    for name, main in (("tok", tt.main), ("gen", tg.main)):
        with pytest.raises(SystemExit):
            main(["--help"])
        texts[name] = capsys.readouterr().out
    for flag in ("--steps", "--save_every", "--out", "--resume CHECKPOINT", "--fresh", "--device", "--preset"):
        assert flag in texts["tok"] and flag in texts["gen"], flag
    for old in ("--max_steps", "--global_batch", "--ckpt_every", "--amp"):  # old spellings: hidden
        assert old not in texts["tok"] and old not in texts["gen"], old


def console_script(name):
    """The installed console script, next to this Python or on PATH (None if not installed)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.is_file() else shutil.which(name)


def test_installed_console_scripts_exit_0_on_success_and_2_on_a_mistake(tmp_path, checkpoints):
    script = console_script("minieq-cache-latents")
    if script is None:
        pytest.skip("minieq is not installed (pip install -e .)")
    # The wrapper imports minieq from wherever Python finds it: make that this source tree.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    ok = subprocess.run([script, "--tokenizer", str(checkpoints["tok"]), "--num_images", "4", "--width", "64",
                         "--out", str(tmp_path / "l.pt"), "--device", "cpu"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "l.pt").is_file()
    wrong = subprocess.run([script, "--tokenizer", str(checkpoints["gen"]), "--out", str(tmp_path / "x.pt"),
                            "--device", "cpu"], env=env, capture_output=True, text=True)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert wrong.stderr.strip().splitlines()[-1].endswith("holds a generator (Generator)")


@pytest.mark.parametrize("target", ["minieq.train_tokenizer:main", "minieq.train_generator:main",
                                    "minieq.sample:main", "minieq.cache_latents:main"])
def test_every_console_script_main_returns_0(target, tmp_path, checkpoints):
    """What ``sys.exit(main())`` of each [project.scripts] entry sees after a successful run."""
    import importlib
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert target in pyproject["project"]["scripts"].values()
    module, _ = target.split(":")
    out = str(tmp_path / "out")
    argv = {
        "minieq.train_tokenizer": ["--preset", "micro", "--steps", "1", "--out", out],
        "minieq.train_generator": ["--preset", "micro", "--steps", "1", "--latents", str(checkpoints["latents"]),
                                   "--out", out],
        "minieq.sample": ["--tokenizer", str(checkpoints["tok"]), "--generator", str(checkpoints["gen"]),
                          "--classes", "0", "--width", "32", "--out", out + ".png"],
        "minieq.cache_latents": ["--tokenizer", str(checkpoints["tok"]), "--num_images", "4", "--width", "64",
                                 "--out", out + ".pt"],
    }[module]
    with pytest.raises(SystemExit) as exit_:
        sys.exit(importlib.import_module(module).main([*argv, "--device", "cpu"]))
    assert exit_.value.code == 0
