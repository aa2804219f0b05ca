"""Check a local ImageNet-1k copy and write the index files minieq.data.imagenet reads.

Expected layout (see data_scripts/README.md)::

    ROOT/train/n01440764/*.JPEG ...   (1000 class folders)
    ROOT/val/n01440764/*.JPEG ...     (the 50,000 validation images sorted into the same folders)

Writes ROOT/minieq_imagenet_train.tsv and ROOT/minieq_imagenet_val.tsv and prints counts.
Usage: python data_scripts/prepare_imagenet.py --root /data/imagenet [--verify]
"""
from minieq.data import scan_image_folder
from prepare_common import prepare_args, run_prepare, write_split


def main(argv=None) -> None:
    args = prepare_args(__doc__, argv)
    train_dir, val_dir = args.root / "train", args.root / "val"
    for folder in (train_dir, val_dir):
        if not folder.is_dir():
            raise SystemExit(f"{folder} is missing; see data_scripts/README.md for the layout")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if len(classes) != 1000:
        print(f"warning: {train_dir} has {len(classes)} class folders, ImageNet-1k has 1000")
    if not any(p.is_dir() for p in val_dir.iterdir()):
        raise SystemExit(f"{val_dir} holds no class folders: sort the validation images into "
                         "<wnid>/ folders first (data_scripts/README.md)")
    for split, folder in (("train", train_dir), ("val", val_dir)):
        files, labels, _ = scan_image_folder(folder, classes, relative_to=args.root)
        path, files, _ = write_split(args.root, "imagenet", split, files, labels, classes, args.verify)
        print(f"{split}: {len(files)} images in {len(classes)} classes -> {path}")


if __name__ == "__main__":
    run_prepare(main)
