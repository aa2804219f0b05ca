"""Pipeline (labels → images at any width), checkpoint loading and the sampling CLI."""
import pytest
import torch
from PIL import Image

from minieq.checkpoint import CheckpointError, save_checkpoint
from minieq.flow import SamplingOptions
from minieq.generator import Generator, GeneratorConfig
from minieq.generator_data import compute_latent_scale
from minieq.pipeline import Pipeline
from minieq.sample import main as sample_main
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig

MICRO = dict(embed_dim=32, depth=2, num_heads=2, head_width=32, head_depth=1, num_sampling_steps=2)
SCALE = 0.3


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return Pipeline(ColumnTokenizer(TokenizerConfig.preset("tiny")),
                    Generator(GeneratorConfig.preset("tiny", **MICRO)), SCALE)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, pipe):
    folder = tmp_path_factory.mktemp("ckpt")
    tok, gen = folder / "tok.pt", folder / "gen.pt"
    save_checkpoint(tok, pipe.tokenizer)
    save_checkpoint(gen, pipe.generator, latent_scale=SCALE)
    return tok, gen


def test_generate_any_width_and_batch_of_one(pipe):
    # The fresh flow head outputs v = 0 (zero-initialised last layer), so the Euler sampler returns
    # its starting noise × temperature: the images must be exactly the decoded noise / scale.
    noise = torch.randn(2, 3, 16)
    images = pipe.generate(torch.tensor([0, 7]), width=24, cfg=2.0, temperature=0.5, noise=noise)
    assert images.shape == (2, 3, 32, 24)
    torch.testing.assert_close(images, pipe.tokenizer.decode(0.5 * noise / SCALE).clamp(-1, 1))
    noise = torch.randn(1, 2, 16)
    torch.testing.assert_close(pipe.generate([3], width=16, noise=noise),
                               pipe.tokenizer.decode(noise / SCALE).clamp(-1, 1))
    assert pipe.generate([1], seed=0).shape[-1] == 16 * 8  # default: 16 tokens


def test_long_images_use_the_bounded_memory_decode(pipe, monkeypatch):
    calls = []
    real = pipe.tokenizer.decode_long
    monkeypatch.setattr(pipe.tokenizer, "decode_long", lambda z, **kw: calls.append(z.shape) or real(z, **kw))
    images = pipe.generate([2], width=8 * 70, seed=0)
    assert images.shape == (1, 3, 32, 560) and calls == [(1, 70, 16)]


def test_seed_makes_samples_reproducible(pipe):
    a = pipe.generate([1, 2], width=32, seed=7)
    assert torch.equal(a, pipe.generate([1, 2], width=32, seed=7))
    assert not torch.equal(a, pipe.generate([1, 2], width=32, seed=8))



def test_generate_takes_the_solver_and_its_steps(pipe):
    gen = Generator(GeneratorConfig.preset("tiny", **MICRO))
    with torch.no_grad():  # a non-zero head, so the solvers differ
        for p in gen.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    heun = Pipeline(pipe.tokenizer, gen.eval(), SCALE)
    a = heun.generate([1, 2], width=32, seed=7, cfg=3.0, solver="heun", steps=2)
    assert torch.equal(a, heun.generate([1, 2], width=32, seed=7, cfg=3.0, solver="heun", steps=2))
    assert not torch.allclose(a, heun.generate([1, 2], width=32, seed=7, cfg=3.0), atol=1e-4)
    with pytest.raises(ValueError, match="unknown solver"):
        heun.generate([1], solver="dopri5")

def test_generate_passes_one_options_object(pipe, monkeypatch):
    options = SamplingOptions(solver="heun", steps=1, cfg=2.0, cfg_schedule="constant", temperature=0.5)
    seen = []
    real = pipe.generator.sample
    monkeypatch.setattr(pipe.generator, "sample", lambda *a, **kw: seen.append(kw["options"]) or real(*a, **kw))
    a = pipe.generate([1, 2], width=24, seed=3, options=options)
    b = pipe.generate([1, 2], width=24, seed=3, cfg=2.0, cfg_schedule="constant", temperature=0.5,
                      solver="heun", steps=1)
    assert torch.equal(a, b) and seen == [options, options]
    with pytest.raises(ValueError, match="temperature must be a finite number"):
        pipe.generate([1], temperature=float("nan"))
    with pytest.raises(ValueError, match="got options= and cfg="):
        pipe.sample_tokens([1], 4, cfg=3.0, options=options)


def test_decode_divides_by_the_latent_scale(pipe):
    tokens = torch.randn(1, 4, 16)
    expected = pipe.tokenizer.decode(tokens / SCALE).clamp(-1, 1)
    torch.testing.assert_close(pipe.decode(tokens), expected)


@pytest.mark.parametrize("width", [8, 12, 0])
def test_bad_width_is_a_clear_error(pipe, width):
    with pytest.raises(ValueError, match="multiple of the column width 8"):
        pipe.generate([0], width=width)


def test_bad_labels_are_a_clear_error(pipe):
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        pipe.generate([8], width=16)
    with pytest.raises(ValueError, match="integer class ids"):  # not silently class 3
        pipe.generate([3.5], width=16)


def test_regenerate_keeps_the_chosen_tokens(pipe):
    tokens = pipe.sample_tokens([4], 6, seed=0)
    keep = torch.tensor([True, True, False, True, False, False])
    images, new = pipe.regenerate(tokens, keep, [4], seed=1)
    assert images.shape == (1, 3, 32, 48)
    assert torch.equal(new[:, keep], tokens[:, keep])
    assert not torch.equal(new[:, ~keep], tokens[:, ~keep])


def test_continue_extends_an_image(pipe):
    start = pipe.generate([5], width=24, seed=0)
    noise = torch.randn(1, 6, 16)
    longer = pipe.continue_(start, [5], width=48, noise=noise)
    assert longer.shape == (1, 3, 32, 48)
    # The 3 tokens of ``start`` are kept; the zero-initialised head turns the rest into its noise.
    tokens = torch.cat([pipe.encode(start), noise[:, 3:]], dim=1)  # (1, 6, C)
    torch.testing.assert_close(longer, pipe.decode(tokens))
    with pytest.raises(ValueError, match="exceed"):
        pipe.continue_(start, [5], width=24)


def test_from_checkpoints_restores_the_scale(checkpoints, pipe):
    tok, gen = checkpoints
    loaded = Pipeline.from_checkpoints(tok, gen)
    assert loaded.latent_scale == SCALE
    noise = torch.randn(1, 2, 16)  # the zero-initialised head returns it: decode(noise / SCALE)
    torch.testing.assert_close(loaded.generate([3], width=16, noise=noise),
                               loaded.tokenizer.decode(noise / SCALE).clamp(-1, 1))
    with pytest.raises(CheckpointError, match=r"expected a tokenizer \(ColumnTokenizer\) checkpoint, but the file holds a generator"):
        Pipeline.from_checkpoints(gen, gen)
    with pytest.raises(CheckpointError, match="expected a generator .* holds a tokenizer"):
        Pipeline.from_checkpoints(tok, tok)


def test_sample_cli_writes_panorama_and_grid(checkpoints, tmp_path):
    tok, gen = checkpoints
    assert sample_main(["--tokenizer", str(tok), "--generator", str(gen), "--classes", "0", "3", "5",
                        "--width", "64", "--cfg", "3", "--seed", "0", "--out", str(tmp_path / "rows.png")]) == 0
    assert Image.open(tmp_path / "rows.png").size == (64 + 4, 3 * 34 + 2)  # one image per row, 2 px padding
    sample_main(["--tokenizer", str(tok), "--generator", str(gen), "--classes", "1", "2", "3", "4",
                 "--width", "16", "--grid", "--out", str(tmp_path / "grid.png")])
    assert Image.open(tmp_path / "grid.png").size == (2 * 18 + 2, 2 * 34 + 2)
    sample_main(["--tokenizer", str(tok), "--generator", str(gen), "--classes", "6",
                 "--width", "16", "--solver", "heun", "--steps", "3", "--out", str(tmp_path / "one.png")])
    assert Image.open(tmp_path / "one.png").size == (20, 36)


def test_sample_cli_refuses_missing_checkpoints(checkpoints, tmp_path, capsys):
    tok, _ = checkpoints
    with pytest.raises(SystemExit):
        sample_main(["--tokenizer", str(tok), "--generator", str(tmp_path / "nope.pt"), "--classes", "0"])
    assert "nope.pt: no such checkpoint file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample_main(["--tokenizer", str(tok), "--generator", str(tok), "--classes", "0", "--width", "20"])


def test_compute_latent_scale_accepts_a_dataset():
    means = 3 * torch.randn(10, 4, 16)
    dataset = [(m, 0) for m in means]
    assert compute_latent_scale(dataset) == compute_latent_scale(means)
    with pytest.raises(ValueError, match="posterior means"):
        compute_latent_scale(torch.randn(4, 16))
