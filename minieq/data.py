"""Data sets: SynthScapes (embedded), ImageNet / Places-30 / LHQ / your own image folders, cached latents.

Every image data set returns ``(image, label)`` with the image a (3, H, W) float tensor in
[-1, 1]. All are map-style (``__len__``), so they work with ``DistributedSampler`` and
``minieq.training.ResumableSampler``.

Real data sets follow the official transforms (docs/official_code.md#tokenizer-optimisation,
#generator-training-script): shorter side resized to the resolution (bilinear), then a random crop +
horizontal flip for training or a centre crop for evaluation. A small index file written by
``data_scripts/prepare_*.py`` lists the images and labels; without one the folder is scanned
ImageFolder-style.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset
from torchvision import transforms as T

from minieq.checkpoint import CheckpointError, safe_torch_load
from minieq import own_images
from minieq.config import token_columns
from minieq.synthscapes import SYNTHSCAPES_CLASSES, render_synthscapes

__all__ = ["SYNTHSCAPES_CLASSES", "render_synthscapes", "SynthScapes", "ImageFiles", "imagenet",
           "places30", "lhq", "image_transform", "load_rgb", "scan_image_folder", "read_index",
           "places30_classes", "PLACES30_CLASSES_FILE", "LatentDataset",
           "check_image_size", "DATASETS", "dataset_names", "build_dataset", "image_folder"]

IMAGE_EXTENSIONS = own_images.IMAGE_EXTENSIONS
PLACES30_CLASSES_FILE = Path(__file__).resolve().parent / "places30_classes.txt"
_VAL_OFFSET = 2**30  # validation images use indices far from the training ones


class SynthScapes(Dataset):
    """``num_images`` SynthScapes renders with balanced labels (image i has class i mod 8).

    Split ``"train"`` uses indices 0..num_images-1, ``"val"`` a disjoint range, so the two never
    share an image. Images are rendered in chunks on first access and kept as 8-bit (like real
    photographs: 3·H·W bytes each), so repeated epochs cost nothing.
    """

    chunk = 256

    def __init__(self, num_images: int, height: int = 32, width: int = 128, seed: int = 0,
                 centered: bool = False, split: str = "train"):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if num_images < 1:
            raise ValueError(f"num_images must be positive, got {num_images}")
        self.num_images, self.height, self.width = num_images, height, width
        self.seed, self.centered, self.split = seed, centered, split
        self.classes = list(SYNTHSCAPES_CLASSES)
        self.first_index = 0 if split == "train" else _VAL_OFFSET
        self.labels = torch.arange(num_images) % len(self.classes)
        self._cache: dict[int, Tensor] = {}

    def __len__(self) -> int:
        return self.num_images

    def render(self, start: int, stop: int) -> Tensor:
        """(stop - start, 3, H, W) float renders of items start..stop-1 (no 8-bit rounding)."""
        return render_synthscapes(self.labels[start:stop], self.height, self.width, self.seed,
                                  torch.arange(start, stop) + self.first_index, self.centered)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"index {i} out of range for {self.num_images} images")
        i %= self.num_images
        c = i // self.chunk
        if c not in self._cache:
            start = c * self.chunk
            images = self.render(start, min(start + self.chunk, self.num_images))
            self._cache[c] = ((images + 1) * 127.5).round().to(torch.uint8)
        image = self._cache[c][i - c * self.chunk].float() / 127.5 - 1
        return image, int(self.labels[i])


def image_transform(resolution: int = 256, train: bool = True) -> T.Compose:
    """Shorter side → ``resolution``; random crop + flip (train) or centre crop; to [-1, 1]."""
    crop = [T.RandomCrop(resolution), T.RandomHorizontalFlip()] if train else [T.CenterCrop(resolution)]
    return T.Compose([T.Resize(resolution, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                      *crop, T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode an image fully and convert it to RGB (grayscale, CMYK, palette; alpha over white)."""
    with Image.open(path) as img:
        img.load()  # decode now, so truncated files fail here and not inside the transform
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("RGB")


class ImageFiles(Dataset):
    """Images from a list of files with integer labels, with the official transforms.

    Unreadable files are skipped at load time: the item is replaced by the next readable file,
    a warning names the bad file, and ``skipped`` counts them (per process: each DataLoader
    worker has its own count). ``data_scripts/prepare_*.py --verify`` removes such files from the
    index up front instead.
    """

    def __init__(self, root: str | os.PathLike, files: list[str], labels: list[int],
                 classes: list[str], resolution: int = 256, train: bool = True, max_retries: int = 20,
                 transform=None):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        if not files:
            raise ValueError(f"{root}: no images found")
        self.root, self.files, self.labels, self.classes = Path(root), files, labels, classes
        self.transform = transform or image_transform(resolution, train)
        self.max_retries = max_retries
        self.skipped = 0
        self.bad_files: set[str] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        for attempt in range(self.max_retries):
            j = (i + attempt) % len(self.files)
            path = self.root / self.files[j]
            try:
                image = load_rgb(path)
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                self.skipped += 1
                if str(path) not in self.bad_files:
                    self.bad_files.add(str(path))
                    warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=2)
                continue
            return self.transform(image), self.labels[j]
        raise RuntimeError(f"{self.max_retries} unreadable images in a row from index {i} "
                           f"under {self.root}; is the data set damaged? (recent: {sorted(self.bad_files)[-3:]})")


def scan_image_folder(folder: str | os.PathLike, classes: list[str] | None = None,
                      relative_to: str | os.PathLike | None = None) -> tuple[list[str], list[int], list[str]]:
    """ImageFolder-style scan: ``folder/<class>/**/<image>``; sorted, labels follow ``classes``.

    ``classes`` defaults to the sorted sub-folder names; a class named ``a/b`` may also be the
    folder ``a_b``. Paths are returned relative to ``relative_to`` (default ``folder``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such folder")
    base = Path(relative_to) if relative_to is not None else folder
    if classes is None:
        classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    class_dirs = [next((folder / n for n in (name, name.replace("/", "_")) if (folder / n).is_dir()), None)
                  for name in classes]
    missing = [name for name, d in zip(classes, class_dirs) if d is None]
    if missing:  # all of them at once: a wrong root misses every class, not just the first
        raise ValueError(f"{folder}: {len(missing)} of {len(classes)} class folders are missing: "
                         f"{', '.join(missing)}")
    files, labels = [], []
    for label, class_dir in enumerate(class_dirs):
        found = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        files += [str(p.relative_to(base)) for p in found]
        labels += [label] * len(found)
    return files, labels, classes


def read_index(path: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """``(files, labels, classes)`` of an index written by ``data_scripts/prepare_common.write_index``:
    a JSON header line with the class names, then ``file<TAB>label`` lines."""
    with open(path) as f:
        try:
            header = json.loads(f.readline())
            classes = header["classes"]
            rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
            return [r[0] for r in rows], [int(r[1]) for r in rows], classes
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise ValueError(f"{path}: not a minieq index file ({err}); rebuild it with data_scripts/") from err


def _folder_dataset(name: str, root: str | os.PathLike, split: str, resolution: int,
                    train: bool | None, classes: list[str] | None) -> ImageFiles:
    root = Path(root)
    index = root / f"minieq_{name}_{split}.tsv"
    if index.is_file():
        files, labels, classes = read_index(index)
    else:
        files, labels, classes = scan_image_folder(root / split, classes, relative_to=root)
    return ImageFiles(root, files, labels, classes, resolution, split == "train" if train is None else train)


def imagenet(root: str | os.PathLike, split: str = "train", resolution: int = 256,
             train: bool | None = None) -> ImageFiles:
    """ImageNet-1k: ``root/{train,val}/<wnid>/*.JPEG`` (1000 classes, labels in sorted wnid order).

    ``train`` (random crop + flip) defaults to ``split == "train"``.
    """
    return _folder_dataset("imagenet", root, split, resolution, train, None)


def places30_classes(path: str | os.PathLike | None = None) -> list[str]:
    """Our 30 Places365 nature classes (the paper does not list its subset), in label order.

    Read from ``places30_classes.txt``, shipped inside the package.
    """
    path = Path(path) if path is not None else PLACES30_CLASSES_FILE
    if not path.is_file():
        raise ValueError(f"{path}: class list not found")
    lines = path.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def places30(root: str | os.PathLike, split: str = "train", resolution: int = 256,
             train: bool | None = None) -> ImageFiles:
    """Places-30: the index from ``prepare_places30.py``, or ``root/<split>/<class>/`` folders."""
    index = Path(root) / f"minieq_places30_{split}.tsv"
    classes = None if index.is_file() else places30_classes()
    return _folder_dataset("places30", root, split, resolution, train, classes)


def lhq_split(names: list, split: str) -> list:
    """LHQ has no official split: every 100th image of the sorted list is val, the rest train."""
    return [name for k, name in enumerate(sorted(names)) if (k % 100 == 0) == (split == "val")]


def lhq(root: str | os.PathLike, split: str = "train", resolution: int = 256,
        train: bool | None = None) -> ImageFiles:
    """LHQ (unconditional, label 0): the index from ``prepare_lhq.py``, or every image under root.

    Without the index the split is :func:`lhq_split` of every image found under ``root``.
    """
    root = Path(root)
    index = root / f"minieq_lhq_{split}.tsv"
    if index.is_file():
        files, labels, classes = read_index(index)
    else:
        found = [str(p.relative_to(root)) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS]
        files = lhq_split(found, split)
        labels, classes = [0] * len(files), ["landscape"]
    return ImageFiles(root, files, labels, classes, resolution, split == "train" if train is None else train)


def image_folder(root: str | os.PathLike, split: str = "train", resolution: int = 256,
                 train: bool | None = None, width: int | None = None) -> ImageFiles:
    """Your own images (``--data folder``): class sub-folders or one class, crops of
    ``resolution`` x ``width`` px (default square); layout, crops and checks: :mod:`minieq.own_images`."""
    folder = own_images.split_folder(root, split)
    files, labels, classes = own_images.scan(folder)
    own_images.check_sizes(folder, files, resolution)
    train = split == "train" if train is None else train
    width = width or resolution
    # Square crops are exactly the real data sets' transform; strips cover-resize first.
    transform = (image_transform(resolution, train) if width == resolution
                 else own_images.crop_transform(resolution, width, train))
    return ImageFiles(folder, files, labels, classes, resolution, train, transform=transform)


# The one registry of data-set names (--data of every tool): the real image folders and their
# builders; SynthScapes is rendered, so it needs no folder and comes first.
IMAGE_FOLDERS = {"imagenet": imagenet, "places30": places30, "lhq": lhq, "folder": image_folder}
DATASETS = ("synthscapes", *IMAGE_FOLDERS)


def dataset_names(last: str = "or") -> str:
    """The registered names as prose for help texts: "synthscapes, imagenet, places30 or lhq"."""
    return f"{', '.join(DATASETS[:-1])} {last} {DATASETS[-1]}"


def build_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train",
                  height: int = 256, width: int | None = None, num_images: int = 4096, seed: int = 0,
                  train: bool | None = None) -> Dataset:
    """One entry point for the training scripts: SynthScapes (rendered) or a real image folder.

    SynthScapes renders ``num_images`` images of ``height`` × ``width`` (width defaults to the
    height); the real data sets give square ``height`` crops
    (the transforms of docs/official_code.md#tokenizer-optimisation; ``train`` = random crop + flip,
    defaulting to ``split == "train"``) and need ``root``; ``folder`` (your own images) gives
    ``height`` × ``width`` crops (:mod:`minieq.own_images`).
    """
    if name == "synthscapes":
        return SynthScapes(num_images, height=height, width=width or height, seed=seed, split=split)
    if name not in IMAGE_FOLDERS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if not root:
        raise ValueError(f"data set {name!r} needs its root folder (--data_path)")
    strip = {"width": width} if name == "folder" else {}  # the real data sets crop squares only
    return IMAGE_FOLDERS[name](root, split=split, resolution=height, train=train, **strip)


class LatentDataset(Dataset):
    """Cached tokenizer latents: a file holding ``{"latents": (M, N, C) float, "labels": (M,) long}``.

    Written by ``minieq.cache_latents`` (posterior means; flipped copies are extra rows).
    Other entries of the file (e.g. the tokenizer config) are kept in ``meta``. The tensors are
    memory-mapped, not read into RAM: at paper size (1.28 M ImageNet images × 2 flips × 16 × 256
    floats ≈ 42 GB) the OS pages in only the rows the batches touch.
    """

    def __init__(self, path: str | os.PathLike):
        data = safe_torch_load(path, mmap=True)
        if not isinstance(data, dict) or "latents" not in data or "labels" not in data:
            raise CheckpointError(f"{path}: not a latent file (expected a dict with 'latents' and 'labels')")
        latents, labels = data["latents"], data["labels"]
        if not (torch.is_tensor(latents) and latents.dim() == 3 and latents.is_floating_point()):
            raise CheckpointError(f"{path}: 'latents' must be a float (M, N, C) tensor, "
                                  f"got {getattr(latents, 'shape', type(latents))}")
        if not (torch.is_tensor(labels) and labels.shape == latents.shape[:1]):
            raise CheckpointError(f"{path}: 'labels' must be a ({latents.shape[0]},) tensor, "
                                  f"got {getattr(labels, 'shape', type(labels))}")
        self.latents, self.labels = latents, labels.long()
        self.meta = {k: v for k, v in data.items() if k not in ("latents", "labels")}

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.latents[i], self.labels[i]


def check_image_size(images: Tensor, height: int, column_width: int) -> None:
    """Raise ``ValueError`` unless ``images`` is (B, 3, height, k·column_width) with k ≥ 2, the
    tokenizer's minimum (its 1D layers need two columns)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h != height:
        raise ValueError(f"image height {h} does not match the tokenizer's image height {height}")
    token_columns(w, column_width)
