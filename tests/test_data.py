"""Data pipeline: SynthScapes properties, real image-folder loaders, latent files, size checks."""
import importlib
import runpy
import warnings
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from minieq.checkpoint import CheckpointError, atomic_torch_save
from minieq.data import (SYNTHSCAPES_CLASSES, LatentDataset, SynthScapes, check_image_size, imagenet,
                         lhq, places30, places30_classes, read_index, render_synthscapes)
from minieq.training import ResumableSampler

REPO = Path(__file__).resolve().parent.parent


# --- SynthScapes ---------------------------------------------------------------------------------

def test_render_shape_range_and_any_size():
    for h, w in [(32, 128), (32, 1), (17, 33), (64, 300), (8, 7)]:
        x = render_synthscapes(torch.arange(8), h, w)
        assert x.shape == (8, 3, h, w) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1 and torch.isfinite(x).all()


def test_render_is_deterministic_by_seed_and_index():
    labels = torch.tensor([0, 3, 5, 7])
    a = render_synthscapes(labels, 32, 64, seed=4, indices=torch.tensor([10, 11, 12, 13]))
    b = render_synthscapes(labels, 32, 64, seed=4, indices=torch.tensor([10, 11, 12, 13]))
    assert torch.equal(a, b)
    # One image does not depend on the rest of the batch.
    c = render_synthscapes(labels[2:3], 32, 64, seed=4, indices=torch.tensor([12]))
    assert torch.equal(a[2:3], c)
    assert not torch.allclose(a, render_synthscapes(labels, 32, 64, seed=5, indices=torch.tensor([10, 11, 12, 13])))
    assert not torch.allclose(a[:1], render_synthscapes(labels[:1], 32, 64, seed=4, indices=torch.tensor([99])))


def test_narrow_render_equals_crop_of_wide_render():
    labels = torch.arange(8)
    wide = render_synthscapes(labels, 32, 1024, seed=1)
    assert torch.allclose(render_synthscapes(labels, 32, 128, seed=1), wide[..., :128], atol=1e-5)
    shifted = render_synthscapes(labels, 32, 128, seed=1, x_offset=500)
    assert torch.allclose(shifted, wide[..., 500:628], atol=1e-5)


def test_crops_of_wide_renders_match_narrow_render_statistics():
    labels = torch.arange(128) % 8
    crops = render_synthscapes(labels, 32, 512, seed=2)[..., 300:428]
    narrow = render_synthscapes(labels, 32, 128, seed=3)
    assert (crops.mean((0, 2, 3)) - narrow.mean((0, 2, 3))).abs().max() < 0.05
    assert abs(crops.std() - narrow.std()) < 0.05
    for c in range(8):  # per class too
        assert (crops[labels == c].mean((0, 2, 3)) - narrow[labels == c].mean((0, 2, 3))).abs().max() < 0.15


def _column_deviation(x: torch.Tensor) -> tuple[float, float]:
    """Largest deviation across x of the per-(channel, row, column) mean and variance over images."""
    sd = x.std()
    mean, var = x.mean(0), x.var(0)                                   # (3, H, W)
    dev_mean = (mean - mean.mean(-1, keepdim=True)).abs().max() / sd
    dev_var = (var - var.mean(-1, keepdim=True)).abs().max() / sd**2
    return float(dev_mean), float(dev_var)


def test_stationary_variant_has_flat_column_statistics_centered_does_not():
    labels = torch.arange(256) % 8
    flat_mean, flat_var = _column_deviation(render_synthscapes(labels, 32, 128, seed=1))
    peak_mean, peak_var = _column_deviation(render_synthscapes(labels, 32, 128, seed=1, centered=True))
    # Measured: stationary about 0.1 / 0.15, centred about 1.5 / 0.6 (in units of the pixel std).
    assert flat_mean < 0.3 and flat_var < 0.35
    assert peak_mean > 0.8 and peak_var > 0.45
    # The centred object sits at the centre: the middle columns differ most from the border.
    x = render_synthscapes(labels, 32, 128, seed=1, centered=True).mean((0, 1, 2))   # (W,)
    assert (x[60:68].mean() - x[:8].mean()).abs() > 3 * (x[:8].mean() - x[-8:].mean()).abs()


def test_classes_have_distinct_mean_colours():
    labels = torch.arange(8).repeat_interleave(16)
    x = render_synthscapes(labels, 32, 128, seed=0)
    colours = torch.stack([x[labels == c].mean((0, 2, 3)) for c in range(8)])   # (8, 3)
    dist = torch.cdist(colours, colours) + torch.eye(8) * 10
    assert dist.min() > 0.1, f"two classes look alike: {dist}"
    assert len(SYNTHSCAPES_CLASSES) == 8


def test_render_rejects_bad_arguments():
    with pytest.raises(ValueError, match="labels"):
        render_synthscapes(torch.tensor([8]), 32, 32)
    with pytest.raises(ValueError, match="height and width"):
        render_synthscapes(torch.tensor([0]), 32, 0)
    with pytest.raises(ValueError, match="differ in length"):
        render_synthscapes(torch.tensor([0, 1]), 32, 32, indices=torch.tensor([0]))


def test_synthscapes_dataset():
    ds = SynthScapes(40, height=16, width=48, seed=3)
    assert len(ds) == 40
    labels = [ds[i][1] for i in range(40)]
    assert labels == [i % 8 for i in range(40)]
    image, _ = ds[5]
    assert image.shape == (3, 16, 48) and image.min() >= -1 and image.max() <= 1
    # 8-bit storage: equal to the float render up to rounding.
    assert (image - ds.render(5, 6)[0]).abs().max() <= 1 / 127.5 + 1e-6
    assert torch.equal(ds[-1][0], ds[39][0])
    val = SynthScapes(40, height=16, width=48, seed=3, split="val")
    assert not torch.allclose(val[0][0], ds[0][0])
    with pytest.raises(IndexError):
        ds[40]
    with pytest.raises(ValueError, match="split"):
        SynthScapes(4, split="test")


def test_synthscapes_with_samplers():
    ds = SynthScapes(24, height=8, width=16)
    sampler = ResumableSampler(len(ds), seed=1, num_replicas=2, rank=1)
    batches = [b for b in DataLoader(ds, batch_size=4, sampler=sampler)]
    assert sum(len(b[1]) for b in batches) == 12
    seen = torch.cat([b[1] for b in batches])
    assert torch.equal(seen, torch.tensor([ds[i][1] for i in sampler]))
    ddp = DistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=0)
    images, labels = next(iter(DataLoader(ds, batch_size=6, sampler=ddp)))
    assert images.shape == (6, 3, 8, 16)


# --- real image folders --------------------------------------------------------------------------

def _save(path: Path, image: Image.Image, fmt: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt)


@pytest.fixture
def fake_imagefolder(tmp_path: Path) -> Path:
    """train/ and val/ with RGB, grayscale, CMYK, RGBA images, one corrupt and one truncated file."""
    half = Image.new("RGB", (120, 80), (255, 0, 0))
    half.paste((0, 0, 255), (60, 0, 120, 80))                 # left red, right blue
    for split in ("train", "val"):
        root = tmp_path / split
        _save(root / "cat" / "a_rgb.jpg", half, "JPEG")
        _save(root / "cat" / "b_gray.png", Image.new("L", (50, 70), 128), "PNG")
        (root / "cat" / "c_corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg" + bytes(range(200)))
        _save(root / "cat" / "d_cmyk.jpg", Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG")
        _save(root / "dog" / "a_rgba.png", Image.new("RGBA", (40, 40), (0, 0, 0, 0)), "PNG")
        _save(root / "dog" / "b_trunc.jpg", half, "JPEG")
        data = (root / "dog" / "b_trunc.jpg").read_bytes()
        (root / "dog" / "b_trunc.jpg").write_bytes(data[: len(data) // 2])
        _save(root / "dog" / "c_rgb.png", half, "PNG")
    return tmp_path


def test_imagefolder_transforms_conversion_and_skip(fake_imagefolder):
    ds = imagenet(fake_imagefolder, "val", resolution=32)
    assert len(ds) == 7 and ds.classes == ["cat", "dog"]
    with pytest.warns(UserWarning, match="unreadable"):
        items = [ds[i] for i in range(len(ds))]
    assert ds.skipped == 2 and len(ds.bad_files) == 2
    for image, label in items:
        assert image.shape == (3, 32, 32) and image.min() >= -1 and image.max() <= 1
    assert [label for _, label in items] == [0, 0, 0, 0, 1, 1, 1]
    rgb, gray, after_corrupt, cmyk, rgba, after_trunc, _ = (im for im, _ in items)
    # Centre crop of the 48x32 resize keeps the red|blue split in the middle, unflipped.
    assert rgb[0, :, :8].mean() > 0.9 and rgb[2, :, -8:].mean() > 0.9
    assert torch.equal(gray[0], gray[1]) and abs(float(gray.mean()) - (128 / 127.5 - 1)) < 0.02
    assert torch.equal(after_corrupt, cmyk)                    # the next readable image
    assert cmyk[0].mean() > 0.9 and cmyk[1].mean() < -0.9      # CMYK cyan-free red -> RGB red
    assert rgba.min() > 0.99                                    # transparent -> white
    assert torch.allclose(after_trunc, items[6][0])


def test_train_transform_crops_and_flips(fake_imagefolder):
    ds = imagenet(fake_imagefolder, "train", resolution=32)
    assert ds.transform.transforms[1].__class__.__name__ == "RandomCrop"
    left_red = [bool(ds[0][0][0, :, :4].mean() > 0.9) for _ in range(40)]
    assert any(left_red) and not all(left_red)                 # flipped about half of the time
    eval_ds = imagenet(fake_imagefolder, "train", resolution=32, train=False)
    assert torch.equal(eval_ds[0][0], eval_ds[0][0])


def test_imagefolder_with_distributed_and_resumable_samplers(fake_imagefolder):
    ds = imagenet(fake_imagefolder, "val", resolution=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for sampler in (DistributedSampler(ds, num_replicas=2, rank=1), ResumableSampler(len(ds), num_replicas=2, rank=0)):
            n = sum(len(labels) for _, labels in DataLoader(ds, batch_size=2, sampler=sampler))
            assert n == 4


def _script(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "data_scripts"))  # as `python data_scripts/<name>.py` has it
    return runpy.run_path(str(REPO / "data_scripts" / f"{name}.py"), run_name="test")["main"]


def test_prepare_names_every_missing_class_folder_in_one_line(tmp_path, capsys, monkeypatch):
    for split in ("train", "val"):
        (tmp_path / split / places30_classes()[0]).mkdir(parents=True)
    main = _script("prepare_places30", monkeypatch)
    run_prepare = importlib.import_module("prepare_common").run_prepare
    with pytest.raises(SystemExit) as exit_:
        run_prepare(lambda: main(["--root", str(tmp_path)]))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1
    n = len(places30_classes())
    assert f"{n - 1} of {n} class folders are missing" in err and places30_classes()[-1] in err


def test_prepare_imagenet_writes_index(fake_imagefolder, capsys, monkeypatch):
    _script("prepare_imagenet", monkeypatch)(["--root", str(fake_imagefolder), "--verify"])
    assert "dropped 2 unreadable" in capsys.readouterr().out
    files, labels, classes = read_index(fake_imagefolder / "minieq_imagenet_train.tsv")
    assert classes == ["cat", "dog"] and len(files) == 5 and labels == [0, 0, 0, 1, 1]
    ds = imagenet(fake_imagefolder, "train", resolution=16)       # reads the index
    assert len(ds) == 5 and ds[4][0].shape == (3, 16, 16)


def test_places30_official_layout(tmp_path, capsys, monkeypatch):
    ours = places30_classes()
    assert len(ours) == 30 and len(set(ours)) == 30
    categories = ["airfield", *ours]
    (tmp_path / "categories_places365.txt").write_text(
        "".join(f"/{n[0]}/{n} {i}\n" for i, n in enumerate(categories)))
    train, val = [], []
    for n in ["airfield", *ours[:3], "desert/sand"]:
        i = categories.index(n)
        _save(tmp_path / "data_256" / n[0] / n / "00000001.jpg", Image.new("RGB", (20, 20), (i * 40, 0, 0)), "JPEG")
        train.append(f"/{n[0]}/{n}/00000001.jpg {i}\n")
        _save(tmp_path / "val_256" / f"Places365_val_{i:08d}.jpg", Image.new("RGB", (20, 20)), "JPEG")
        val.append(f"Places365_val_{i:08d}.jpg {i}\n")
    (tmp_path / "places365_train_standard.txt").write_text("".join(train))
    (tmp_path / "places365_val.txt").write_text("".join(val))
    _script("prepare_places30", monkeypatch)(["--root", str(tmp_path)])
    files, labels, classes = read_index(tmp_path / "minieq_places30_train.tsv")
    assert classes == ours and len(files) == 4                  # "airfield" is not ours
    assert labels == [0, 1, 2, ours.index("desert/sand")]
    ds = places30(tmp_path, "val", resolution=16)
    assert len(ds) == 4 and ds[0][0].shape == (3, 16, 16)


def test_lhq_is_unconditional(tmp_path, monkeypatch):
    for i in range(5):
        _save(tmp_path / "lhq_256" / f"{i:07d}.png", Image.new("RGB", (30, 20), (i * 50, 90, 0)), "PNG")
    train, val = lhq(tmp_path, "train", resolution=16), lhq(tmp_path, "val", resolution=16)
    assert len(train) == 4 and len(val) == 1 and {train[i][1] for i in range(4)} == {0}
    _script("prepare_lhq", monkeypatch)(["--root", str(tmp_path)])
    assert len(lhq(tmp_path, "train")) == 4


# --- latents and sizes ---------------------------------------------------------------------------

def test_latent_dataset(tmp_path, monkeypatch):
    latents, labels = torch.randn(6, 4, 3), torch.arange(6) % 2
    atomic_torch_save({"latents": latents, "labels": labels, "scale": 0.5}, tmp_path / "lat.pt")
    # The file is memory-mapped (paper-size latents do not fit in RAM), never read whole.
    calls, load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw.get("mmap")) or load(*a, **kw))
    ds = LatentDataset(tmp_path / "lat.pt")
    assert calls == [True]
    monkeypatch.setattr(torch, "load", load)
    assert len(ds) == 6 and torch.equal(ds[3][0], latents[3]) and int(ds[3][1]) == 1
    assert ds.meta == {"scale": 0.5}
    torch.save({"latents": latents}, tmp_path / "nolabels.pt")
    with pytest.raises(CheckpointError, match="nolabels.pt.*latent file"):
        LatentDataset(tmp_path / "nolabels.pt")
    torch.save({"latents": latents, "labels": labels[:3]}, tmp_path / "short.pt")
    with pytest.raises(CheckpointError, match="short.pt.*labels"):
        LatentDataset(tmp_path / "short.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pt"):
        LatentDataset(tmp_path / "junk.pt")


def test_check_image_size():
    check_image_size(torch.zeros(2, 3, 32, 128), 32, 8)
    with pytest.raises(ValueError, match="height 16"):
        check_image_size(torch.zeros(2, 3, 16, 128), 32, 8)
    with pytest.raises(ValueError, match="multiple of the column width 8"):
        check_image_size(torch.zeros(2, 3, 32, 100), 32, 8)
    with pytest.raises(ValueError, match="multiple"):
        check_image_size(torch.zeros(2, 3, 32, 0), 32, 8)
    check_image_size(torch.zeros(2, 3, 32, 16), 32, 8)  # two columns: the tokenizer's minimum
    with pytest.raises(ValueError, match="at least 16"):
        check_image_size(torch.zeros(2, 3, 32, 8), 32, 8)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        check_image_size(torch.zeros(3, 32, 128), 32, 8)


def test_data_demo_writes_the_pictures(tmp_path, capsys):
    from minieq.course.demo import main

    main(["--out", str(tmp_path), "--data_only"])
    out = capsys.readouterr().out
    grid, strip = tmp_path / "synthscapes_classes.png", tmp_path / "synthscapes_strip_32x1024.png"
    assert str(grid) in out and str(strip) in out
    assert Image.open(grid).size == (4 * 130 + 2, 8 * 34 + 2)      # 4 per class, 8 classes, 2-px gaps
    assert Image.open(strip).size[0] >= 1024 and Image.open(strip).size[1] >= 32
