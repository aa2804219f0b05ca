"""Select our 30 nature classes from a local Places365 copy and write minieq.data.places30's index.

Two layouts are accepted (see data_scripts/README.md):

1. the official Places365-Standard small-image release, unpacked in ROOT::

       ROOT/categories_places365.txt  ROOT/places365_train_standard.txt  ROOT/places365_val.txt
       ROOT/data_256/a/airfield/00000001.jpg ...   ROOT/val_256/Places365_val_00000001.jpg ...

2. ImageFolder folders ROOT/{train,val}/<class>/ with the class names of
   minieq/places30_classes.txt ("desert/sand" may also be the folder "desert_sand").

Labels follow the order of places30_classes.txt. Writes ROOT/minieq_places30_{train,val}.tsv.
Usage: python data_scripts/prepare_places30.py --root /data/places365 [--verify]
"""
from pathlib import Path

from minieq.data import places30_classes, scan_image_folder
from prepare_common import prepare_args, run_prepare, write_split


def from_official(root: Path, classes: list[str]) -> dict:
    """Read the official file lists; keep the images of our classes, relabelled 0..29."""
    official = {}
    for line in (root / "categories_places365.txt").read_text().split("\n"):
        if line.strip():
            name, idx = line.split()
            official[int(idx)] = name.split("/", 2)[2]  # "/d/desert/sand" -> "desert/sand"
    missing = sorted(set(classes) - set(official.values()))
    if missing:
        raise SystemExit(f"categories_places365.txt lacks our classes {missing}")
    ours = {idx: classes.index(name) for idx, name in official.items() if name in classes}
    splits = {}
    for split, listing, folder in (("train", "places365_train_standard.txt", "data_256"),
                                   ("val", "places365_val.txt", "val_256")):
        files, labels = [], []
        for line in (root / listing).read_text().split("\n"):
            if line.strip():
                name, idx = line.split()
                if int(idx) in ours:
                    files.append(f"{folder}/{name.lstrip('/')}")
                    labels.append(ours[int(idx)])
        splits[split] = (files, labels)
    return splits


def main(argv=None) -> None:
    args = prepare_args(__doc__, argv)
    classes = places30_classes()
    if (args.root / "categories_places365.txt").is_file():
        splits = from_official(args.root, classes)
    elif (args.root / "train").is_dir() and (args.root / "val").is_dir():
        splits = {split: scan_image_folder(args.root / split, classes, relative_to=args.root)[:2]
                  for split in ("train", "val")}
    else:
        raise SystemExit(f"{args.root}: neither the official Places365 layout nor train/ and val/ "
                         "class folders; see data_scripts/README.md")
    for split, (files, labels) in splits.items():
        path, files, labels = write_split(args.root, "places30", split, files, labels, classes, args.verify)
        counts = [labels.count(c) for c in range(len(classes))]
        print(f"{split}: {len(files)} images in {len(classes)} classes "
              f"({min(counts)}..{max(counts)} per class) -> {path}")


if __name__ == "__main__":
    run_prepare(main)
