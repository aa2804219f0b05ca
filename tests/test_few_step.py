"""The few-step head's contract: it plugs into the sampling API (solver="distilled", steps 1..4),
calls the head once per step, guides like the ODE solvers, is deterministic with a seed, loads
only onto its teacher, and distillation trains it towards the teacher's jumps."""
import pytest
import torch

from minieq import distill, few_step
from minieq.checkpoint import CheckpointError
from minieq.flow import SamplingOptions
from minieq.generator import Generator, GeneratorConfig
from minieq.generator_sampling import annealed_steps


def _generator(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    gen = Generator(GeneratorConfig.preset("tiny", embed_dim=32, depth=2, num_heads=2, head_width=32,
                                           head_depth=2)).eval()
    for p in gen.head.parameters():  # a teacher whose velocity is not zero
        torch.nn.init.normal_(p, std=0.05)
    return gen.requires_grad_(False)


def _distilled_file(gen: Generator, path, steps: int = 3) -> distill.DistillConfig:
    cfg = distill.DistillConfig(images=8, num_tokens=4, steps=steps, batch_size=32, val_rows=16, rank=4)
    data = distill.trajectories(gen, cfg, batch=8, log=lambda *_: None)
    student, _ = distill.train(gen.head, data, cfg, log=lambda *_: None)
    few_step.export(student, gen.head, path, cfg.rank, float(cfg.rank), distill_config=cfg.to_dict())
    return cfg


def test_untrained_student_is_the_teachers_euler(tmp_path):
    """A fresh few-step head is its teacher (zero step embedding, zero low-rank update): N steps of
    it are the teacher's Euler-N from the same noise, guided at the same scale."""
    gen = _generator()
    _distilled_file(gen, tmp_path / "fs.pt", steps=0)
    few_step.attach(gen, tmp_path / "fs.pt")
    labels, noise = torch.tensor([0, 3]), torch.randn(2, 6, gen.config.token_dim)
    for steps in (1, 2, 4):
        a = gen.sample(labels, 6, cfg=2.5, solver="distilled", steps=steps, noise=noise)
        b = gen.sample(labels, 6, cfg=2.5, solver="euler", steps=steps, noise=noise)
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)  # fp16 storage of the biases


@pytest.mark.parametrize("cfg", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_one_head_call_per_step_with_guided_rows(tmp_path, head_call_rows, cfg, steps):
    gen = _generator()
    _distilled_file(gen, tmp_path / "fs.pt")
    few_step.attach(gen, tmp_path / "fs.pt")
    rows = head_call_rows
    rows.clear()  # count the sampling calls only, not the distillation's
    gen.sample(torch.tensor([1, 2, 5]), 5, cfg=cfg, cfg_schedule="constant", solver="distilled", steps=steps)
    assert len(rows) == 5 * steps  # one call per step and token
    assert set(rows) == {6 if cfg != 1.0 else 3}  # guidance doubles the rows, not the calls


def test_deterministic_with_a_seed_and_guidance_changes_samples(tmp_path):
    gen = _generator()
    _distilled_file(gen, tmp_path / "fs.pt")
    few_step.attach(gen, tmp_path / "fs.pt")
    draw = lambda seed, cfg: gen.sample(torch.tensor([0, 1]), 6, cfg=cfg, solver="distilled", steps=2,
                                        generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(draw(7, 3.0), draw(7, 3.0), rtol=0, atol=0)
    assert not torch.equal(draw(7, 3.0), draw(8, 3.0))
    assert not torch.allclose(draw(7, 3.0), draw(7, 1.0))


def test_refusals_are_one_line(tmp_path):
    gen = _generator()
    with pytest.raises(ValueError, match="needs a few-step head"):
        gen.sample(torch.tensor([0]), 3, solver="distilled", steps=1)
    _distilled_file(gen, tmp_path / "fs.pt")
    with pytest.raises(CheckpointError, match="another generator"):
        few_step.attach(_generator(seed=1), tmp_path / "fs.pt")
    few_step.attach(gen, tmp_path / "fs.pt")
    with pytest.raises(ValueError, match="trained for steps"):
        gen.sample(torch.tensor([0]), 3, solver="distilled", steps=5)
    with pytest.raises(ValueError, match="guidance 1..4"):  # before the first token, not at token 12
        gen.sample(torch.tensor([0]), 16, cfg=6.0, solver="distilled", steps=1)
    (tmp_path / "bad.pt").write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="not a readable"):
        few_step.attach(gen, tmp_path / "bad.pt")
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a minieq few-step head"):
        few_step.attach(gen, tmp_path / "other.pt")


def test_teacher_path_is_the_heads_midpoint_solve():
    gen = _generator()
    c, u = torch.randn(4, 32), torch.randn(4, 32)
    s, noise = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.randn(4, gen.config.token_dim)
    path = distill.teacher_path(gen.head, c, u, s, noise, grid=6)
    torch.testing.assert_close(path[:, 6], noise)
    for i in range(4):
        ref = gen.head.sample(c[i:i + 1], u[i:i + 1], float(s[i]), noise=noise[i:i + 1], solver="midpoint", steps=6)
        torch.testing.assert_close(path[i:i + 1, 0], ref)


def test_distillation_reduces_the_jump_error():
    gen = _generator()
    cfg = distill.DistillConfig(images=32, num_tokens=4, steps=150, batch_size=128, val_rows=64, rank=8,
                                lr=3e-3, warmup=10)
    data = distill.trajectories(gen, cfg, batch=16, log=lambda *_: None)
    _, history = distill.train(gen.head, data, cfg, log=lambda *_: None)
    before, after = history[0]["val"], history[-1]["val"]
    assert after[1] < 0.7 * before[1], (before, after)  # one step: the teacher's Euler-1 is far off


def test_annealed_steps_ramp_then_hold():
    assert [annealed_steps(5, 2, k, 3) for k in range(6)] == [5, 4, 3, 2, 2, 2]
    assert [annealed_steps(4, None, k, 3) for k in range(3)] == [4, 4, 4]
    with pytest.raises(ValueError, match="give steps too"):
        SamplingOptions(late_steps=2)


def test_annealed_steps_cost_per_token(head_call_rows):
    gen = _generator()
    calls = head_call_rows
    gen.sample(torch.tensor([0]), 6, options=SamplingOptions(solver="midpoint", steps=4, late_steps=1))
    window = gen.config.cond_length  # tokens 0..window-1 ramp, the rest hold late_steps
    expected = sum(2 * annealed_steps(4, 1, k, window) for k in range(6))
    assert len(calls) == expected


def test_an_attached_head_is_not_part_of_the_generators_weights(tmp_path):
    from minieq.checkpoint import load_checkpoint, save_checkpoint
    gen = _generator()
    keys = set(gen.state_dict())
    _distilled_file(gen, tmp_path / "fs.pt")
    few_step.attach(gen, tmp_path / "fs.pt")
    assert set(gen.state_dict()) == keys
    save_checkpoint(tmp_path / "gen.pt", gen)
    loaded = load_checkpoint(tmp_path / "gen.pt")
    assert loaded.head.few_step is None
    gen.load_state_dict(loaded.state_dict())  # strict: the attached head is not "missing"


def test_distill_command_takes_any_generator_checkpoint(tmp_path):
    """The command that made the shipped head distils any generator (e.g. a paper-size preset on a
    GPU) through the same code: here a tiny one, a few steps."""
    from minieq.checkpoint import save_checkpoint
    gen = _generator()
    save_checkpoint(tmp_path / "gen.pt", gen)
    distill.main(["--out", str(tmp_path / "run"), "--generator", str(tmp_path / "gen.pt"), "--device", "cpu",
                  "--images", "8", "--num_tokens", "4", "--steps", "2", "--batch_size", "32",
                  "--val_rows", "16", "--rank", "4"])
    few_step.attach(gen, tmp_path / "run" / "few_step_head.pt")
    assert gen.sample(torch.tensor([0]), 4, cfg=2.0, solver="distilled", steps=2).shape == (1, 4, gen.config.token_dim)
