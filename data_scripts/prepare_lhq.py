"""Check a local LHQ copy and write the index files minieq.data.lhq reads.

LHQ (Landscapes HQ, 90,000 landscape images) is unconditional: every label is 0. It has no
official split; we hold out every 100th image (in sorted order) as validation (data.lhq_split).
Writes ROOT/minieq_lhq_train.tsv and ROOT/minieq_lhq_val.tsv and prints counts.
Usage: python data_scripts/prepare_lhq.py --root /data/lhq_256 [--verify]
"""
from minieq.data import IMAGE_EXTENSIONS, lhq_split
from prepare_common import prepare_args, run_prepare, write_split


def main(argv=None) -> None:
    args = prepare_args(__doc__, argv)
    if not args.root.is_dir():
        raise SystemExit(f"{args.root}: no such folder; see data_scripts/README.md")
    found = [str(p.relative_to(args.root)) for p in args.root.rglob("*")
             if p.suffix.lower() in IMAGE_EXTENSIONS]  # lhq_split sorts
    if not found:
        raise SystemExit(f"{args.root}: no images found")
    if len(found) != 90000:
        print(f"note: found {len(found)} images, the full LHQ has 90,000")
    for split in ("train", "val"):
        files = lhq_split(found, split)
        path, files, _ = write_split(args.root, "lhq", split, files, [0] * len(files), ["landscape"],
                                     args.verify)
        print(f"{split}: {len(files)} images -> {path}")


if __name__ == "__main__":
    run_prepare(main)
