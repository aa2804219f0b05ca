"""torchrun as users run it: both trainers' command lines under ``torchrun --nproc_per_node 2``
(gloo, CPU) end with the weights one process reaches at the same global batch.

Tolerance: one process sums the gradients of its 8 images in one backward pass; two ranks sum 4
each and gloo all-reduces the halves, a different float summation order (and BatchNorm's and
the adaptive GAN weight's statistics are all-reduced the same way). Three Adam steps keep those
round-off differences near 1e-7; 1e-5 leaves room and still catches a real difference (checked:
with per-rank BatchNorm, or with the adaptive weight from each rank's own gradients, the
tokenizer test fails). The machine's load sets the time: ~25 s of CPU per test.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import minieq.train_generator as tg
import minieq.train_tokenizer as tt
from minieq.checkpoint import read_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = dict(rtol=1e-5, atol=1e-5)

# The tokenizer: PatchGAN on from step 1 (two steps with the adaptive weight and the
# discriminator update). The σ-VAE draws and DiffAug are drawn per rank (docs/training_at_scale.md),
# so they are off here; everything else runs as in training.
TOKENIZER_ARGS = ["--preset", "fast", "--num_images", "32", "--image_width", "64", "--batch_size", "8",
                  "--steps", "3", "--disc_type", "patchgan", "--patchgan_channels", "8",
                  "--patchgan_layers", "2", "--disc_start", "1", "--sample", "false",
                  "--diffaug", "false", "--log_every", "1", "--image_every", "0",
                  "--device", "cpu"]
# The generator: dropout is its one per-rank draw; label drop, shift and flow noise stay on.
GENERATOR_ARGS = ["--preset", "fast", "--batch_size", "8", "--steps", "3", "--dropout", "0",
                  "--log_every", "1", "--device", "cpu"]


def make_latents(path, m=32, n=4, c=16, classes=8):
    g = torch.Generator().manual_seed(0)
    torch.save({"latents": 6 * torch.randn(m, n, c, generator=g) + 1,
                "labels": torch.arange(m) % classes}, path)
    return path


def torchrun(module: str, args: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MINIEQ_DEVICE": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", module, *args]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, f"torchrun failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def assert_same_weights(ddp: dict, single: dict, keys: tuple[str, ...]) -> None:
    assert ddp["train_state"]["step"] == single["train_state"]["step"] == 3
    for key in keys:
        assert ddp[key].keys() == single[key].keys()
        for name, value in single[key].items():
            torch.testing.assert_close(ddp[key][name], value, **TOL, msg=f"{key}[{name}]")


def logged(run_dir, field: str) -> torch.Tensor:
    return torch.tensor([json.loads(line).get(field, 0.0) for line in (run_dir / "metrics.jsonl").open()])


def test_tokenizer_with_patchgan_under_torchrun_equals_one_process(tmp_path):
    torchrun("minieq.train_tokenizer", [*TOKENIZER_ARGS, "--out", str(tmp_path / "ddp")])
    assert tt.main([*TOKENIZER_ARGS, "--out", str(tmp_path / "single")]) == 0
    ddp = read_checkpoint(tmp_path / "ddp" / "checkpoint.pt")
    single = read_checkpoint(tmp_path / "single" / "checkpoint.pt")
    assert_same_weights(ddp, single, ("state_dict", "ema_state_dict", "discriminator"))
    # The discriminator trained (its BatchNorm statistics are the global batch's) and the
    # adaptive weight was on: the same values in both runs.
    assert single["discriminator"]["net.3.num_batches_tracked"] > 0
    d_weight = logged(tmp_path / "single", "d_weight")
    assert d_weight[0] == 0 and (d_weight[1:] > 0).all()
    torch.testing.assert_close(logged(tmp_path / "ddp", "d_weight"), d_weight, **TOL)
    disc_loss = logged(tmp_path / "single", "disc_loss")  # 0: no discriminator update at step 0
    assert disc_loss[0] == 0 and (disc_loss[1:] > 0).all()
    torch.testing.assert_close(logged(tmp_path / "ddp", "disc_loss"), disc_loss, **TOL)


def test_generator_under_torchrun_equals_one_process(tmp_path):
    latents = str(make_latents(tmp_path / "latents.pt"))
    torchrun("minieq.train_generator", [*GENERATOR_ARGS, "--latents", latents, "--out", str(tmp_path / "ddp")])
    assert tg.main([*GENERATOR_ARGS, "--latents", latents, "--out", str(tmp_path / "single")]) == 0
    ddp = read_checkpoint(tmp_path / "ddp" / "generator.pt")
    single = read_checkpoint(tmp_path / "single" / "generator.pt")
    assert_same_weights(ddp, single, ("state_dict", "ema_state_dict"))
    assert ddp["latent_scale"] == pytest.approx(single["latent_scale"], rel=1e-6)
    losses = logged(tmp_path / "single", "loss")
    torch.testing.assert_close(logged(tmp_path / "ddp", "loss"), losses, **TOL)
    assert not torch.equal(losses[0], losses[-1])
