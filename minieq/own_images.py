"""Your own images as a data set (``--data folder --data_path DIR``): scan, checks, crops.

Layout: ``DIR/<class>/**/<image>`` gives one class per sub-folder (labels in sorted name order,
as ImageNet's folders); a folder without sub-folders is one class named after the folder. If
``DIR/train`` (or ``DIR/val``) exists, the split reads that folder instead, so a folder with a
held-out part works like the real data sets; otherwise every split reads DIR itself.

Crops follow the real data sets (docs/official_code.md#tokenizer-optimisation): the image is
resized (bilinear, antialiased) to the smallest size that covers the crop, keeping its aspect
ratio, then cropped at random with a random horizontal flip (training) or at the centre. For a
square crop that is exactly "shorter side to the resolution". **Crops wider than square are
allowed** (``width``: any multiple of the tokenizer's column width): the column tokenizer and the
generator never see an image as a square but as a row of columns, the course's tokenizers
are trained on 32 x 128 strips (16 columns, as the paper's 256 x 256), and a panorama keeps
more of its content as a strip than as a square cut from its middle.

The checks read each file's header once (no pixels; about 0.1 ms a file), so a mistake is one
line at start-up instead of a crash mid-run: no image files, no readable image, images lower
than the tokenizer's height (they would be upsampled into blur). A file that cannot be decoded
later is skipped and counted by :class:`minieq.data.ImageFiles`, as for the real data sets.
"""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val")


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images_under(folder: Path) -> list[Path]:
    """Image files under ``folder`` at any depth, sorted, hidden folders (.ipynb_checkpoints) left out."""
    return sorted(p for p in folder.rglob("*") if _is_image(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts[:-1]))


def split_folder(root: str | os.PathLike, split: str) -> Path:
    """``root/split`` if the user made one, else ``root`` (every split reads the same images)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such folder")
    return root / split if split in SPLITS and (root / split).is_dir() else root


def scan(folder: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """``(files relative to folder, labels, class names)``: one class per sub-folder holding
    images, or the folder itself as the only class."""
    folder = Path(folder)
    loose = sorted(p for p in folder.iterdir() if _is_image(p))
    # One walk per sub-folder: {class folder: its images}, folders without images left out.
    found = {p: _images_under(p) for p in sorted(folder.iterdir())
             if p.is_dir() and not p.name.startswith(".") and p.name not in SPLITS}
    found = {d: images for d, images in found.items() if images}
    if not found:
        if not loose:
            raise ValueError(f"{folder}: no image files ({' '.join(IMAGE_EXTENSIONS)}) in it or its sub-folders")
        return [p.name for p in loose], [0] * len(loose), [folder.resolve().name]
    if loose:  # a label for them would be a guess
        raise ValueError(f"{folder}: has class sub-folders and also {len(loose)} image(s) beside them "
                         f"(first: {loose[0].name}); move those into a class folder")
    files, labels = [], []
    for label, images in enumerate(found.values()):
        files += [str(p.relative_to(folder)) for p in images]
        labels += [label] * len(images)
    return files, labels, [d.name for d in found]


def check_sizes(folder: str | os.PathLike, files: list[str], height: int) -> int:
    """Raise one-line ``ValueError`` when no file is readable or some image is lower than
    ``height`` px; returns how many headers could not be read (skipped later, when loaded)."""
    folder = Path(folder)
    unreadable, small, first_error = 0, [], None
    for name in files:
        try:
            with Image.open(folder / name) as img:  # lazy: reads the header only
                w, h = img.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            unreadable += 1
            first_error = first_error or f"{name}: {err}"
            continue
        if h < height:
            small.append(f"{name}, {w}x{h}")
    if unreadable == len(files):
        raise ValueError(f"{folder}: none of its {len(files)} image files can be read (first: {first_error})")
    if small:
        raise ValueError(f"{folder}: {len(small)} of {len(files)} images are lower than the tokenizer's "
                         f"height {height} px (first: {small[0]}); remove or upscale them")
    return unreadable


class CoverResize:
    """Resize a PIL image to the smallest size covering ``(height, width)``, aspect kept."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width

    def __call__(self, img: Image.Image) -> Image.Image:
        w, h = img.size
        scale = max(self.height / h, self.width / w)
        # ceil-free rounding can fall one pixel short of the crop: never below the crop size.
        size = (max(self.height, round(h * scale)), max(self.width, round(w * scale)))  # (H, W)
        return TF.resize(img, list(size), interpolation=T.InterpolationMode.BILINEAR, antialias=True)


def crop_transform(height: int, width: int, train: bool) -> T.Compose:
    """Cover-resize, then a random crop + flip (train) or a centre crop, to [-1, 1] (3, H, W)."""
    crop = [T.RandomCrop((height, width)), T.RandomHorizontalFlip()] if train else [T.CenterCrop((height, width))]
    return T.Compose([CoverResize(height, width), *crop, T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
