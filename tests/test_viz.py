"""Visualisation helpers: grid shapes, GIF round trip, and the token-by-token frames (Fig. 2/8)."""
import math

import imageio.v2 as imageio
import numpy as np
import pytest
import torch

from minieq import viz
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig


@pytest.fixture(scope="module")
def tiny_tokenizer():
    torch.manual_seed(0)
    return ColumnTokenizer(TokenizerConfig.preset("tiny")).eval()


def _image(width=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 32, width, generator=g) * 2 - 1


def test_to_uint8_maps_range_and_layout():
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0]).reshape(1, 1, 4).expand(3, 1, 4)
    out = viz.to_uint8(x)
    assert out.shape == (1, 4, 3) and out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 128, 255, 255]  # 0 -> 127.5 rounds to 128; 3 clamps
    with pytest.raises(ValueError, match="3, H, W"):
        viz.to_uint8(torch.zeros(2, 4, 4))


def test_image_grid_shape_and_placement():
    images = torch.stack([torch.full((3, 4, 6), v) for v in (-1.0, 0.0, 1.0)])  # 3 images 4x6
    grid = viz.image_grid(images, nrow=2, padding=1)
    assert grid.shape == (2 * (4 + 1) + 1, 2 * (6 + 1) + 1, 3) and grid.dtype == np.uint8
    assert (grid[1:5, 1:7] == 0).all()  # first image: black, top left
    assert (grid[1:5, 8:14] == 128).all()  # second: grey, top right
    assert (grid[6:10, 1:7] == 255).all()  # third: white, bottom left
    assert (grid[6:10, 8:14] == 255).all()  # empty slot stays the white padding colour
    assert viz.image_grid(list(images), nrow=8, padding=0).shape == (4, 18, 3)


def test_save_image_grid_writes_png(tmp_path):
    from PIL import Image

    path = viz.save_image_grid(tmp_path / "sub" / "grid.png", torch.zeros(4, 3, 8, 8), nrow=2)
    assert Image.open(path).size == (2 * 10 + 2, 2 * 10 + 2)  # (width, height)


def test_reconstruction_grid_pairs_and_panorama():
    originals, recons = -torch.ones(3, 3, 4, 8), torch.ones(3, 3, 4, 8)
    grid = viz.reconstruction_grid(originals, recons, padding=0)
    assert grid.shape == (12, 16, 3)
    assert (grid[:, :8] == 0).all() and (grid[:, 8:] == 255).all()  # original | reconstruction
    with pytest.raises(ValueError, match="same shape"):
        viz.reconstruction_grid(originals, recons[:2])
    wide = torch.linspace(-1, 1, 40).expand(3, 4, 40)
    pano = viz.panorama(wide, rows=3, padding=0)  # 40 px wrapped into 3 lines of 14
    assert pano.shape == (12, 14, 3)
    assert (pano[8:, 12:] == 255).all()  # the last line is padded white
    np.testing.assert_array_equal(pano[4:8, :14], viz.to_uint8(wide[..., 14:28]))


def test_token_by_token_frames(tiny_tokenizer):
    tok = tiny_tokenizer
    image = _image(width=6 * tok.config.column_width)
    with torch.no_grad():
        z = tok.encode(image[None])  # (1, N, C)
    n = z.shape[1]
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(1)) * z.std()
    frames = viz.token_by_token_frames(tok, image, noise=noise, batch_size=4)
    assert len(frames) == n + 1
    assert all(f.shape == image.shape for f in frames)
    with torch.no_grad():
        first, last = tok.decode(noise).clamp(-1, 1)[0], tok.decode(z).clamp(-1, 1)[0]
    torch.testing.assert_close(frames[0], first, atol=1e-4, rtol=0)
    torch.testing.assert_close(frames[-1], last, atol=1e-4, rtol=0)
    # Intermediate frames differ from both ends (the replacement really is progressive).
    assert (frames[n // 2] - first).abs().max() > 1e-3
    assert (frames[n // 2] - last).abs().max() > 1e-3


def test_default_noise_matches_latent_scale(tiny_tokenizer):
    z = torch.randn(1, 200, 16) * 18 + 3
    noise = viz._latent_scale_noise(z, torch.Generator().manual_seed(0))
    assert noise.shape == z.shape
    torch.testing.assert_close(noise.std(dim=1), z.std(dim=1), atol=3.0, rtol=0)
    reference = torch.randn(50, 8, 16) * 5 - 7  # statistics of "many images" win over z's own
    noise = viz._latent_scale_noise(z, torch.Generator().manual_seed(0), reference=reference)
    assert abs(noise.mean().item() + 7) < 1.0 and abs(noise.std().item() - 5) < 1.0
    image = _image(width=4 * tiny_tokenizer.config.column_width)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    a = viz.token_by_token_frames(tiny_tokenizer, image, generator=g1)
    b = viz.token_by_token_frames(tiny_tokenizer, image, generator=g2)
    assert len(a) == 5
    torch.testing.assert_close(torch.stack(a), torch.stack(b))  # reproducible via generator


def test_token_by_token_figure_keeps_titles_whole_and_has_no_empty_margins(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    long_label = "pretrained course model (shipped; tokenizer trained 16000 steps, hours on a CPU)"
    frames = {long_label: [torch.rand(3, 8, 32) * 2 - 1 for _ in range(17)],  # 16 tokens of 2 px
              "short": [torch.rand(3, 16, 64) * 2 - 1 for _ in range(17)]}  # a bigger tokenizer
    fig = viz.token_by_token_figure(frames, every=2, scale=3.0, dpi=100)
    FigureCanvasAgg(fig)
    renderer = fig.canvas.get_renderer()
    width, height = fig.get_size_inches() * fig.dpi
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 2 * 9  # k = 0, 2, ..., 16 for each tokenizer
    # Every frame is shown at the same height (scale × the smallest frame height), side by side.
    boxes = [ax.get_window_extent(renderer) for ax in images]
    assert {round(b.height) for b in boxes} == {24}
    # Every text (the wrapped titles, the k labels) lies inside the figure: nothing is cut.
    for text in fig.texts:
        box = text.get_window_extent(renderer)
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= width and box.y1 <= height, text.get_text()
    assert any("\n" in t.get_text() for t in fig.texts)  # the long title was wrapped
    # No dead space: the panels and labels span the figure up to a small padding.
    assert min(b.x0 for b in boxes) < 110 and max(b.x1 for b in boxes) > width - 10  # 110: the k labels
    assert min(b.y0 for b in boxes) < 10
    fig.savefig(tmp_path / "tbt.png")
    with pytest.raises(ValueError, match="same number"):
        viz.token_by_token_figure({"a": frames["short"], "b": frames["short"][:5]})


def test_gif_and_strip(tmp_path):
    from PIL import Image

    frames = [torch.full((3, 8, 16), v) for v in (-1.0, 0.0, 1.0)]
    path = viz.save_gif(frames, tmp_path / "tbt.gif", fps=5, hold_last=1.0)
    read = imageio.mimread(path)
    assert len(read) == 3 and read[0].shape[:2] == (8, 16)
    with Image.open(path) as gif:
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert durations == [200, 200, 1200]  # 5 fps, the last frame held one more second
    assert read[0][..., :3].mean() <= 1 and read[-1][..., :3].mean() >= 254  # black ... white
    strip = viz.frames_strip(frames, padding=1)
    assert strip.shape == (3 * 9 + 1, 18, 3)


def test_plot_loss_curves_skips_missing_values():
    import matplotlib

    matplotlib.use("Agg")
    rows = [{"step": 0, "l1": 1.0}, {"step": 1, "l1": 0.5, "kl": "nan"}, {"step": 2, "kl": 2.0}]
    fig = viz.plot_loss_curves(rows, ["l1", "kl", "absent"], smooth=0.5)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {"l1", "kl"}
    assert lines["l1"].get_xdata().tolist() == [0, 1]
    assert lines["l1"].get_ydata().tolist() == [1.0, 0.75]  # EMA with factor 0.5
    with pytest.raises(ValueError, match="smooth"):
        viz.plot_loss_curves(rows, ["l1"], smooth=1.0)


def test_tokenizer_demo_writes_figures_and_reference_scores(tiny_tokenizer, tmp_path):
    from minieq.course.demo import fit_column_pca, run_tokenizer_demo

    cfg = tiny_tokenizer.config
    pca = fit_column_pca(cfg, 16 * cfg.column_width, num_images=64)
    summary = run_tokenizer_demo(tiny_tokenizer, tmp_path, num_images=8, pca=pca)
    for name in ("reconstructions.png", "token_by_token.gif", "token_by_token.png"):
        assert (tmp_path / name).stat().st_size > 0
    keys = ("heldout_psnr_db", "heldout_ssim", "baseline_row_mean_psnr_db",
            "baseline_column_mean_psnr_db", "baseline_column_pca_psnr_db")
    assert all(math.isfinite(summary[k]) for k in keys) and summary["heldout_images"] == 8
    # The references need no training steps. Column means keep 3·32 numbers per 8-px column,
    # the PCA codec 16 (fitted on training images), the row mean 3·32 per image; an untrained
    # network is below all of them.
    assert summary["baseline_column_mean_psnr_db"] > summary["baseline_column_pca_psnr_db"] > \
        summary["baseline_row_mean_psnr_db"] > summary["heldout_psnr_db"]


def test_regeneration_picture_marks_the_redrawn_columns_and_shows_the_change():
    original = torch.zeros(3, 4, 16)  # grey, four 4-px columns
    version = original.clone()
    version[..., 8:12] = 1.0  # column 2 redrawn (white)
    keep = torch.tensor([True, True, False, True])
    pic = viz.regeneration_picture(original, [version], [keep], column_width=4, gain=2.0, bar=3, padding=2)
    # Rows: pad, original (4), pad, bar (3), version (4), change (4), pad; columns: pad, 16, pad.
    assert pic.shape == (2 + 4 + 2 + 3 + 4 + 4 + 2, 20, 3) and pic.dtype == np.uint8
    bar = pic[8:11, 2:18]
    assert (bar[:, 8:12] == [255, 0, 0]).all() and (bar[:, :8] == 255).all()  # red over column 2 only
    change = pic[15:19, 2:18, 0]
    assert (change[:, 8:12] == 255).all() and (change[:, :8] == 0).all()  # |1 - 0| / 2 · 2 = 1: white
    version[..., 0, :4] = 0.1  # a small change in column 0: white after scaling to the maximum
    pic = viz.regeneration_picture(original, [version], [keep], column_width=4, gain=None)
    assert (pic[15:19, 2:18, 0][:, 8:12] == 255).all() and 20 < pic[15, 2, 0] < 30  # 0.1 of the way
    with pytest.raises(ValueError, match="keep mask"):
        viz.regeneration_picture(original, [version], [keep[:3]], column_width=4)
