"""GPU-only paths run on the CPU: bf16 autocast (switched on by MINIEQ_CPU_BF16=1) in both
trainers, in the tokenizer loss with every network and in sampling; CUDA RNG state and DataLoader
workers in resumable runs."""
import pytest
import torch

import minieq.train_generator as tg
import minieq.train_tokenizer as tt
from minieq.checkpoint import read_checkpoint
from minieq.data import SynthScapes
from minieq.losses import TokenizerLoss, TokenizerLossConfig
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig
from minieq.training import batches_from
from minieq.utils import CPU_BF16_ENV, autocast, get_rng_state, set_rng_state

TOK_MICRO = dict(ch=8, ch_mult=[1, 1, 1, 1], num_groups=4, z_channels=4, embed_dim=8, attn_resolutions=[],
                 semantic_ch=8, semantic_ch_mult=[1, 1], semantic_out_channels=8)
GEN_MICRO = dict(embed_dim=32, depth=2, num_heads=2, head_width=32, head_depth=1, num_sampling_steps=2)


@pytest.fixture
def cpu_bf16(monkeypatch):
    monkeypatch.setenv(CPU_BF16_ENV, "1")


def test_the_switch_is_opt_in(monkeypatch):
    monkeypatch.delenv(CPU_BF16_ENV, raising=False)
    with autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    with autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast("cpu", enabled=False):  # a trainer's bf16=False wins over the switch
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def _weights(path) -> dict:
    return read_checkpoint(path)["state_dict"]


def _max_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_tokenizer_trainer_bf16_path(tmp_path, cpu_bf16):
    """PatchGAN, adaptive weight and the offline perceptual loss under bf16 autocast."""
    def run(bf16):
        cfg = tt.TokenizerTrainConfig.preset("tiny", **dict(
            tokenizer_overrides=TOK_MICRO, num_images=8, image_width=64, batch_size=4, steps=3,
            warmup=1, log_every=1, image_every=0, save_every=3, bf16=bf16,
            loss=dict(lpips_weight=0.1, perceptual="lite1", disc_type="patchgan", patchgan_channels=8,
                      patchgan_layers=2, disc_start=1, semantic_weight=0.0, reduction="mean")))
        return _weights(tt.train(cfg, tmp_path / f"bf16_{bf16}", device="cpu", progress=False))

    bf16, fp32 = run(True), run(False)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in bf16.values())
    # bf16 really ran (different round-off), and trained the same model to within bf16 precision.
    assert 0 < _max_difference(bf16, fp32) < 0.05


def test_tokenizer_loss_with_every_network_under_bf16(cpu_bf16):
    """The DINO discriminator, DiffAug and the DINOv2 semantic teacher (small random stand-ins)
    on a bf16 reconstruction: they run in fp32 and give finite losses and gradients."""
    tok = ColumnTokenizer(TokenizerConfig.preset("tiny", **{**TOK_MICRO, "semantic_out_channels": 32}))
    loss_fn = TokenizerLoss(TokenizerLossConfig(lpips_weight=0.0, disc_start=0, semantic_start=0),
                            semantic_channels=32, allow_random_backbones=True)
    x = torch.rand(2, 3, 32, 64) * 2 - 1
    with autocast("cpu"):
        out = tok.reconstruct(x, sample=True, semantic=True)
    assert out.recon.dtype == torch.bfloat16  # autocast did run the decoder in bf16
    logs = loss_fn.generator_loss(x, out, step=1, last_layer=tok.last_layer_weight)
    logs["loss"].backward()
    assert logs["loss"].dtype == torch.float32 and torch.isfinite(logs["loss"])
    assert float(logs["d_weight"]) > 0 and float(logs["semantic_loss"]) > 0
    assert torch.isfinite(tok.last_layer_weight.grad).all()
    d_logs = loss_fn.discriminator_loss(x, out.recon, step=1)
    d_logs["disc_loss"].backward()
    assert torch.isfinite(d_logs["disc_loss"])


def test_generator_trainer_bf16_path(tmp_path, cpu_bf16):
    g = torch.Generator().manual_seed(0)
    torch.save({"latents": 6 * torch.randn(32, 4, 16, generator=g) + 1, "labels": torch.arange(32) % 8},
               tmp_path / "latents.pt")

    def run(bf16, **kw):
        cfg = tg.GeneratorTrainConfig.preset("fast", **dict(
            latents=str(tmp_path / "latents.pt"), batch_size=8, steps=3, warmup_epochs=0.5, blr=0.05,
            log_every=1, save_every=3, bf16=bf16, model_overrides=dict(GEN_MICRO), **kw))
        return _weights(tg.train(cfg, tmp_path / f"bf16_{bf16}_{len(kw)}", device="cpu", progress=False))

    bf16, fp32 = run(True), run(False)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in bf16.values())
    assert 0 < _max_difference(bf16, fp32) < 0.05
    checkpointed = run(True, grad_checkpointing=True)  # recomputation under autocast, as on a GPU
    assert _max_difference(checkpointed, bf16) < 1e-6


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("solver,steps", [("euler", 2), ("midpoint", 5)])
def test_sampling_under_bf16(micro_pipe, cpu_bf16, use_cache, solver, steps):
    reference = micro_pipe.generate([1, 2], width=64, seed=0, use_cache=use_cache, solver=solver, steps=steps)
    with autocast("cpu"):
        images = micro_pipe.generate([1, 2], width=64, seed=0, use_cache=use_cache, solver=solver,
                                     steps=steps)
    assert images.dtype == torch.float32 and images.shape == (2, 3, 32, 64)  # the API's dtype
    assert 0 < float((images - reference).abs().max()) < 0.25  # bf16 ran; the picture stays


def test_cuda_rng_state_restores_on_any_gpu_count(monkeypatch):
    """A checkpoint from a 2-GPU machine restores the GPUs this machine has (here: a fake one)."""
    state = get_rng_state()
    state["cuda"] = [torch.ByteTensor(16).fill_(1), torch.ByteTensor(16).fill_(2)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, index: restored.append((index, int(s[0]))))
    set_rng_state(state)
    assert restored == [(0, 1)]


def _batches(dataset, start, count, num_workers):
    it = batches_from(dataset, 4, start_step=start, seed=3, num_workers=num_workers,
                      generator=torch.Generator(), persistent_workers=False)
    return [next(it) for _ in range(count)]


def test_resume_with_workers_replays_the_same_samples():
    """num_workers=2: a run resumed at step 3 gets the samples (order, labels, pixels) a straight
    run gets at steps 3..5 (augmentation drawn inside the workers is not replayed: documented)."""
    dataset = SynthScapes(24, height=32, width=64, seed=0)
    straight = _batches(dataset, 0, 6, num_workers=2)
    resumed = _batches(dataset, 3, 3, num_workers=2)
    for (step_a, (xa, ya)), (step_b, (xb, yb)) in zip(straight[3:], resumed):
        assert step_a == step_b and torch.equal(ya, yb) and torch.equal(xa, xb)
    in_process = _batches(dataset, 3, 3, num_workers=0)
    assert all(torch.equal(a[1][0], b[1][0]) for a, b in zip(resumed, in_process))
