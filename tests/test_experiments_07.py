"""The paper's analyses of notebook 07: loss positions, PCA codecs, the experiments' summaries and FLOP counts."""
import json

import pytest
import torch

from minieq.experiments import attention, efficiency, per_position, zero_shot
from minieq.evaluation import PCACodec
from minieq.checkpoint import read_checkpoint
from minieq.experiments.training_runs import SCALES, file_latents, pca_latents, synthscapes, train_on_latents
from minieq.generator import Generator, GeneratorConfig
from minieq.train_generator import GeneratorTrainConfig, build_generator, train
from minieq.training import check_loss_positions, masked_position_mean

MICRO = dict(embed_dim=32, depth=2, num_heads=2, head_width=32, head_depth=1, num_sampling_steps=2)


@pytest.mark.parametrize("attention_kind", ["window", "full", "strict"])
def test_untrained_positions_get_no_gradient_through_the_loss(attention_kind):
    gen = Generator(GeneratorConfig.preset("tiny", **MICRO, attention=attention_kind)).eval()
    with torch.no_grad():  # the head's adaLN starts at zero (it ignores the condition): perturb it
        for p in gen.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tokens = torch.randn(3, 8, 16, requires_grad=True)
    per_position = gen.loss(tokens, torch.tensor([0, 1, 2]), per_position=True)  # (8,)
    weight = gen.head.net.input_proj.weight
    grad_tokens, grad_head = torch.autograd.grad(masked_position_mean(per_position, [0, 1, 2, 3]),
                                                 (tokens, weight), retain_graph=True)
    # Rows 0-3 are predicted from tokens 0-2 only, and targets are detached: tokens 3-7 (the
    # untrained targets, and context of untrained rows only) must get exactly zero gradient.
    assert torch.all(grad_tokens[:, 3:] == 0)
    assert grad_tokens[:, :3].abs().sum() > 0
    # The head learns from the kept rows only: the same gradient as their plain mean gives,
    # and not the gradient of all rows.
    kept = torch.autograd.grad(per_position[:4].mean(), weight, retain_graph=True)[0]
    every = torch.autograd.grad(per_position.mean(), weight)[0]
    assert torch.allclose(grad_head, kept)
    assert not torch.allclose(grad_head, every)


def test_masked_mean_is_the_mean_over_kept_rows():
    per_position = torch.tensor([1.0, 2.0, 3.0, 10.0])
    assert masked_position_mean(per_position, None).item() == pytest.approx(4.0)
    assert masked_position_mean(per_position, [0, 2]).item() == pytest.approx(2.0)
    for bad in ([], [0, 0], [4], [-1]):
        with pytest.raises(ValueError, match="loss_positions"):
            check_loss_positions(bad, 4)
    check_loss_positions(None, 4)


def test_trainer_restricts_the_loss_and_refuses_bad_positions(tmp_path):
    torch.save({"latents": torch.randn(32, 4, 16), "labels": torch.arange(32) % 8}, tmp_path / "l.pt")
    base = dict(latents=str(tmp_path / "l.pt"), batch_size=8, steps=2, log_every=1,
                model_overrides=dict(MICRO))
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        train(GeneratorTrainConfig.preset("fast", **base, loss_positions=[0, 4]), tmp_path / "bad")
    path = train(GeneratorTrainConfig.preset("fast", **base, loss_positions=[0, 1]), tmp_path / "ok")
    assert read_checkpoint(path)["train_config"]["loss_positions"] == [0, 1]
    # The flag exists on the command line too.
    from minieq.train_generator import main
    main(["--out", str(tmp_path / "cli"), "--latents", str(tmp_path / "l.pt"), "--steps", "1",
          "--batch_size", "8", "--loss_positions", "2", "3", "--device", "cpu"])
    assert read_checkpoint(tmp_path / "cli" / "generator.pt")["train_config"]["loss_positions"] == [2, 3]


def test_pca_codec_layouts_token_order_and_round_trip():
    images, _ = synthscapes(64, False, "train", 0)  # (64, 3, 32, 128)
    column = PCACodec(images, "column", 8, 16)
    grid = PCACodec(images, "grid", 16, 16)
    assert column.encode(images[:2]).shape == grid.encode(images[:2]).shape == (2, 16, 16)
    # Unit-std tokens in both layouts, so one σ-VAE noise bound means the same in both.
    for codec in (column, grid):
        assert codec.encode(images).std().item() == pytest.approx(1.0, abs=0.05)
    # Raster order: changing the patch at grid row 1, column 2 changes token 1 * 8 + 2 only.
    x = images[:1].clone()
    x[..., 16:32, 32:48] = 0.0
    changed = (grid.encode(x) - grid.encode(images[:1])).abs().sum(-1)[0] > 1e-6  # (16,)
    assert changed.nonzero().flatten().tolist() == [10]
    # With every component kept the codec is lossless.
    full = PCACodec(images, "grid", 16, 768)
    assert torch.allclose(full.decode(full.encode(images[:4])), images[:4], atol=1e-4)
    with pytest.raises(ValueError, match="layout"):
        PCACodec(images, "diagonal", 8, 16)


def test_zero_shot_summary_compares_with_the_all16_model():
    s = zero_shot.summarize([1.0] * 4, [1.0, 1.0, 1.5, 2.0], trained=[0, 1])
    assert s["excess_trained"] == pytest.approx(0.0)
    assert s["excess_untrained"] == pytest.approx(0.75)
    assert s["untrained_loss"] == pytest.approx(1.75)


def test_per_position_summary():
    assert per_position.spread([2.0, 2.0, 2.0]) == 0.0
    s = per_position.summarize(early=[2.0, 4.0], final=[1.0, 3.0])
    assert s["improvement"] == [0.5, 0.25]
    assert s["spread"] == pytest.approx(0.5)  # std 1 / mean 2
    assert s["max_over_min"] == pytest.approx(3.0)


def test_attention_pairs_reproduce_the_papers_ratio():
    assert efficiency.attention_pairs(16, "full") == 136
    assert efficiency.attention_pairs(16, "window") == 58
    assert efficiency.attention_pairs(16, "strict") == 12 * 10
    assert efficiency.attention_pairs(3, "strict") == 6  # shorter than a window: plain causal
    table = attention.attention_table()
    assert table["full"]["paper_units"] == pytest.approx(4.2, abs=0.06)
    assert table["window"]["paper_units"] == pytest.approx(1.8, abs=0.02)
    ratio = table["full"]["paper_units"] / table["window"]["paper_units"]
    assert ratio == pytest.approx(4.2 / 1.8, rel=0.01)
    # The strict variant re-runs the stack on every window: far more transformer work.
    assert table["strict"]["transformer_gflops"] > 3 * table["window"]["transformer_gflops"]


def test_training_forward_macs_match_the_papers_gflops():
    for name in ("Ours-S", "AR-MAR-2D-B (16 tokens)"):
        preset, n, overrides = efficiency.MODELS[name]
        c = efficiency.count_generator(preset, n, overrides)
        assert c["loss_forward"] / 2e9 == pytest.approx(efficiency.PAPER_GFLOPS[name], rel=0.01)
        assert c["params_M"] == pytest.approx({"S": 127.3, "B": 295.6}[preset], abs=0.1)


def test_paper_scale_builds_the_small_model_and_needs_latent_files(tmp_path):
    paper = SCALES["paper"]
    cfg = GeneratorTrainConfig.preset(paper.train_preset, model=paper.model, batch_size=paper.batch_size)
    with torch.device("meta"):
        gen = build_generator(cfg, 1000, 256)
    assert (gen.config.embed_dim, gen.config.depth, gen.config.head_width) == (512, 16, 960)
    assert cfg.batch_size == 2048 and paper.steps == 10 * paper.early_step
    with pytest.raises(ValueError, match="--column_latents"):
        zero_shot.run(tmp_path, scale="paper")
    with pytest.raises(ValueError, match="--column_latents"):
        per_position.run(tmp_path, scale="paper")
    with pytest.raises(ValueError, match="--latents"):
        attention.run(tmp_path, scale="paper")


def test_train_on_latents_measures_early_and_final_loss(tmp_path):
    latents = pca_latents("grid", centered=True, num_images=64, val_images=16)
    scale = SCALES["cpu"]
    run = train_on_latents(latents, tmp_path / "run", scale, steps=4, eval_steps=(2,),
                           model_overrides=dict(MICRO, layout="grid", attention="full", shift_num=1))
    assert sorted(run.val_loss) == [2, 4]
    assert all(len(v) == 16 and all(x > 0 for x in v) for v in run.val_loss.values())
    assert run.val_loss[2] != run.val_loss[4]
    assert run.generator.config.layout == "grid" and not run.generator.training


def test_paper_scale_latent_files_are_trained_in_place(tmp_path):
    # At ImageNet size a latent file is ~42 GB: the runs must read it, not copy it.
    torch.save({"latents": torch.randn(40, 4, 16), "labels": torch.arange(40) % 8, "noise_std": 2.5},
               tmp_path / "l.pt")
    latents = file_latents(tmp_path / "l.pt", val_rows=8)
    assert latents.val.shape == (8, 4, 16) and latents.decode is None and latents.num_classes == 8
    run = train_on_latents(latents, tmp_path / "run", SCALES["cpu"], steps=1, model_overrides=dict(MICRO))
    assert not (tmp_path / "run" / "latents.pt").exists()
    assert read_checkpoint(run.checkpoint)["train_config"]["latents"] == str(tmp_path / "l.pt")
    with pytest.raises(ValueError, match="fewer"):
        file_latents(tmp_path / "l.pt", val_rows=100)


def test_zero_shot_command_writes_json_and_png(tmp_path, monkeypatch):
    monkeypatch.setitem(zero_shot.MODELS, "column", dict(MICRO))
    monkeypatch.setitem(zero_shot.MODELS, "grid", dict(MICRO, layout="grid", attention="full", shift_num=1))
    result = zero_shot.main(["--out", str(tmp_path), "--steps", "2", "--num_images", "32", "--device", "cpu"])
    data = json.loads((tmp_path / "zero_shot.json").read_text())
    assert (tmp_path / "zero_shot.png").stat().st_size > 0
    assert data["trained_positions"] == list(range(8)) and data["seed"] == 0
    for layout in ("column", "grid"):
        row = data["models"][layout]
        assert len(row["subset_loss"]) == len(row["all16_loss"]) == 16
        assert row["untrained_loss"] == pytest.approx(sum(row["subset_loss"][8:]) / 8, rel=1e-4)
    assert result["models"].keys() == data["models"].keys()
