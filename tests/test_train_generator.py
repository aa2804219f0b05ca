"""Generator training: exact resume, NaN guard, DDP equivalence, latent scale, weight-decay groups."""
import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from minieq.checkpoint import read_checkpoint
from minieq.generator import Generator, GeneratorConfig
from minieq.generator_data import compute_latent_scale
from minieq.train_generator import GeneratorTrainConfig, param_groups, train
from minieq.training import NonFiniteLossError

MICRO = dict(embed_dim=32, depth=2, num_heads=2, head_width=32, head_depth=1, num_sampling_steps=2)
N_TOKENS = 4


def make_latents(path, m=32, n=N_TOKENS, c=16, classes=8):
    g = torch.Generator().manual_seed(0)
    torch.save({"latents": 6 * torch.randn(m, n, c, generator=g) + 1,
                "labels": torch.arange(m) % classes}, path)
    return path


def micro_config(tmp_path, **kw):
    base = dict(latents=str(tmp_path / "latents.pt"), batch_size=8,
                steps=4, warmup_epochs=0.5, blr=0.05, log_every=1, save_every=2,
                model_overrides=dict(MICRO))
    return GeneratorTrainConfig.preset("fast", **{**base, **kw})


def fit(tmp_path, out, **kw):
    """Train the micro config into ``tmp_path / out``; returns the checkpoint path."""
    return train(micro_config(tmp_path, **kw), tmp_path / out, progress=False)


@pytest.fixture
def latents(tmp_path):
    return make_latents(tmp_path / "latents.pt")


def test_latent_scale_gives_unit_std_and_is_stored(tmp_path, latents):
    means = torch.load(latents)["latents"]
    scale = compute_latent_scale(means)
    from minieq.tokenizer import sigma_vae_sample
    noisy = sigma_vae_sample(means, generator=torch.Generator().manual_seed(5))
    assert abs(float((noisy * scale).std()) - 1) < 0.05
    # The noise matters: the scale of the means alone would be larger.
    assert scale < 1 / float(means.std())
    ckpt = read_checkpoint(fit(tmp_path, "run", steps=1))
    assert ckpt["latent_scale"] == pytest.approx(scale, rel=1e-6)


def test_exact_resume_matches_straight_run(tmp_path, latents):
    straight = read_checkpoint(fit(tmp_path, "a", steps=4))
    halfway = read_checkpoint(fit(tmp_path, "b", steps=2))
    resumed = read_checkpoint(fit(tmp_path, "b", steps=4))
    assert straight["train_state"]["step"] == resumed["train_state"]["step"] == 4
    for key in ("state_dict", "ema_state_dict"):
        for name, value in straight[key].items():
            assert torch.equal(value, resumed[key][name]), f"{key}[{name}] differs after resume"
    # The second half really trained.
    assert halfway["train_state"]["step"] == 2
    assert not torch.equal(halfway["state_dict"]["z_proj.weight"], resumed["state_dict"]["z_proj.weight"])


def test_per_position_loss_is_logged(tmp_path, latents):
    fit(tmp_path, "run", steps=3)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert len(r["per_position"]) == N_TOKENS
        assert r["loss"] == pytest.approx(sum(r["per_position"]) / N_TOKENS, rel=1e-5)


def test_images_encoded_on_the_fly_and_sample_grids(tmp_path):
    from minieq.checkpoint import save_checkpoint
    from minieq.tokenizer import ColumnTokenizer, TokenizerConfig

    save_checkpoint(tmp_path / "tok.pt", ColumnTokenizer(TokenizerConfig.preset("tiny")))
    ckpt = read_checkpoint(fit(tmp_path, "run", latents=None, tokenizer=str(tmp_path / "tok.pt"),
                               data="synthscapes", synth_images=16, steps=2, diffusion_batch_mul=1))
    assert ckpt["train_state"]["step"] == 2 and ckpt["config"]["num_classes"] == 8
    assert ckpt["config"]["token_dim"] == 16 and ckpt["latent_scale"] > 0
    assert (tmp_path / "run" / "samples" / "step0000002.png").is_file()


def test_cli_flags_override_the_preset(tmp_path, latents):
    from minieq.train_generator import main

    assert main(["--preset", "fast", "--latents", str(latents), "--out", str(tmp_path / "run"),
                 "--batch_size", "8", "--steps", "1", "--label_drop", "0.2", "--betas", "0.8", "0.9"]) == 0
    ckpt = read_checkpoint(tmp_path / "run" / "generator.pt")
    assert ckpt["train_config"]["betas"] == [0.8, 0.9] and ckpt["config"]["label_drop"] == 0.2
    assert ckpt["train_state"]["step"] == 1


def test_nan_guard_stops_and_keeps_last_good_checkpoint(tmp_path, latents, monkeypatch):
    calls = {"n": 0}
    real_loss = Generator.loss

    def loss_turning_nan(self, tokens, labels, per_position=False, **draws):
        calls["n"] += 1
        out = real_loss(self, tokens, labels, per_position, **draws)
        return out * float("nan") if calls["n"] == 3 else out

    monkeypatch.setattr(Generator, "loss", loss_turning_nan)
    with pytest.raises(NonFiniteLossError, match="step 2"):
        fit(tmp_path, "run", steps=6, save_every=2)
    ckpt = read_checkpoint(tmp_path / "run" / "generator.pt")
    assert ckpt["train_state"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_weight_decay_groups_follow_the_official_rule():
    gen = Generator(GeneratorConfig.preset("tiny", **MICRO))
    decay, no_decay = param_groups(gen, 0.02)
    assert decay["weight_decay"] == 0.02 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in gen.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    assert all(n.startswith("head.") or n.endswith(".bias") or gen.get_parameter(n).dim() < 2
               for n in exempt)
    assert not any(n.startswith("head.") for n in decayed)  # the flow head ("diffloss") is exempt
    # As in the official code, the class embeddings, null class and buffer positions decay.
    assert {"class_emb.weight", "fake_latent", "encoder_pos_embed_learned",
            "encoder_blocks.0.attn.qkv.weight"} <= decayed
    assert {"encoder_blocks.0.norm1.weight", "z_proj.bias", "head.net.input_proj.weight"} <= exempt


# ---- DDP ------------------------------------------------------------------------------------------

def ddp_config(tmp_path):
    # Dropout off: it is the only randomness drawn per rank (everything else per global batch).
    return micro_config(tmp_path, steps=3, dropout=0.0)


def _ddp_worker(rank, world, port, tmp_path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MINIEQ_DEVICE="cpu")
    torch.set_num_threads(1)  # a forked child must not reuse the parent's OpenMP pool
    import minieq.dist
    try:
        train(ddp_config(tmp_path), tmp_path / "ddp", progress=False)
    finally:
        minieq.dist.cleanup()


def test_ddp_two_ranks_match_one_process(tmp_path, latents):
    """2 gloo ranks × batch 4 vs 1 process × batch 8: the same weights, EMA and logged losses.

    What is compared: data sharding (each global batch holds the same samples), σ-VAE noise,
    label drop, RoPE shift and flow noise and times (all drawn for the global batch, sliced by
    rank), gradient averaging, clipping, AdamW, EMA and the rank-0 checkpoint. Dropout, the one
    per-rank draw, is off. Equality is up to float summation order (tolerance 1e-5): the
    gradients of 8 rows are summed in one backward here, as two all-reduced halves there.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children reuse the imported modules (re-importing torch takes seconds).
    mp.start_processes(_ddp_worker, args=(2, port, tmp_path), nprocs=2, join=True, start_method="fork")
    single = read_checkpoint(train(ddp_config(tmp_path), tmp_path / "single", progress=False))
    ddp = read_checkpoint(tmp_path / "ddp" / "generator.pt")
    assert ddp["train_state"]["step"] == single["train_state"]["step"] == 3
    for key in ("state_dict", "ema_state_dict"):
        for name, value in single[key].items():
            torch.testing.assert_close(ddp[key][name], value, rtol=1e-5, atol=1e-5, msg=f"{key}[{name}]")

    def losses(run):
        return torch.tensor([json.loads(line)["per_position"]
                             for line in (tmp_path / run / "metrics.jsonl").open()])  # (steps, N)

    torch.testing.assert_close(losses("ddp"), losses("single"), rtol=1e-5, atol=1e-6)
    assert not torch.equal(losses("single")[0], losses("single")[-1])  # the runs did learn


def test_loss_draws_for_the_global_batch_do_not_depend_on_the_split():
    """Two halves (rank 0 and 1 of 2) draw exactly the rows one call draws for the whole batch."""
    gen = Generator(GeneratorConfig.preset("tiny", **MICRO, attn_dropout=0.0, proj_dropout=0.0))
    tokens, labels = torch.randn(6, N_TOKENS, 16), torch.arange(6) % 8

    def per_position(rows, split):
        return gen.loss(tokens[rows], labels[rows], per_position=True, split=split,
                        generator=torch.Generator().manual_seed(3))

    whole = per_position(slice(None), (0, 1))
    halves = (per_position(slice(0, None, 2), (0, 2)) + per_position(slice(1, None, 2), (1, 2))) / 2
    torch.testing.assert_close(halves, whole, rtol=1e-6, atol=1e-7)
    again = gen.loss(tokens, labels, per_position=True, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(again, whole)  # the generator's seed does matter


def test_course_scratch_generator_trains_once_then_loads(tmp_path, latents, monkeypatch):
    from minieq import course

    micro = {**GeneratorTrainConfig.PRESETS["fast"], "steps": 2, "model_overrides": dict(MICRO)}
    monkeypatch.setitem(GeneratorTrainConfig.PRESETS, "micro", micro)
    monkeypatch.setitem(course.MODE_PRESETS, True, "micro")
    gen, scale = course.scratch_generator(latents_path=latents, run_dir=tmp_path, fast=True)
    saved = read_checkpoint(tmp_path / "generator.pt")
    assert saved["latent_scale"] == scale and not gen.training
    assert "train_state" not in saved  # the artifact holds the EMA weights only
    for name, value in read_checkpoint(tmp_path / "generator_run" / "generator.pt")["ema_state_dict"].items():
        assert torch.equal(gen.state_dict()[name], value)
    monkeypatch.setattr(course, "scratch_latents", None)  # a second call must not train again
    again, scale_again = course.scratch_generator(run_dir=tmp_path)
    assert scale_again == scale and torch.equal(again.z_proj.weight, gen.z_proj.weight)
