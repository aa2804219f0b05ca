"""Your own images (--data folder): layout, crops, one-line errors, and the README recipe run end
to end on a generated folder of PNGs; sampling with no paths and by class name."""
import re
import shlex
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from minieq import cache_latents, data, own_images, sample
from minieq import train_generator as tg
from minieq import train_tokenizer as tt
from minieq.checkpoint import read_checkpoint
from minieq.pipeline import Pipeline

from conftest import REPO


def make_folder(root, classes=("cats", "dogs"), per_class=4, size=(48, 160), seed=0):
    """PNGs of size (H, W): class k is tinted by k, so labels are visible in the pixels."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            pixels[..., k % 3] = 255
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_class_sub_folders_give_sorted_labels_and_strip_crops(tmp_path):
    root = make_folder(tmp_path / "imgs", classes=("zebra", "ant"), per_class=3)
    ds = data.build_dataset("folder", root, height=32, width=96)
    assert ds.classes == ["ant", "zebra"] and ds.labels == [0, 0, 0, 1, 1, 1]
    image, label = ds[4]
    assert image.shape == (3, 32, 96) and label == 1
    assert image.min() >= -1 and image.max() <= 1
    assert torch.all(image[0] == 1)  # zebra (tinted red when made, first) is label 1 after sorting
    square = data.build_dataset("folder", root, height=32, train=False)[0][0]
    assert square.shape == (3, 32, 32)  # default: the real data sets' square crop


def test_a_folder_without_sub_folders_is_one_class_and_splits_read_their_folder(tmp_path):
    make_folder(tmp_path / "pics" / "x", per_class=2, classes=("a",))
    flat = tmp_path / "pics" / "x" / "a"
    ds = data.build_dataset("folder", flat, height=32)
    assert ds.classes == ["a"] and ds.labels == [0, 0]
    split = tmp_path / "split"
    make_folder(split / "train", classes=("a", "b"), per_class=2)
    make_folder(split / "val", classes=("a", "b"), per_class=1)
    assert len(data.build_dataset("folder", split, split="train", height=32)) == 4
    assert len(data.build_dataset("folder", split, split="val", height=32)) == 2


def test_cover_resize_keeps_the_aspect_and_covers_the_crop():
    img = Image.new("RGB", (300, 100))  # W x H
    assert own_images.CoverResize(32, 128)(img).size == (128, 43)  # width decides: 128 / 300
    assert own_images.CoverResize(64, 64)(img).size == (192, 64)   # height decides: shorter side


def test_mistakes_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [(empty, "no image files"), (tmp_path / "nope", "no such folder")]
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not a png")
    cases.append((junk, "none of its 1 image files can be read"))
    small = make_folder(tmp_path / "small", size=(20, 64), per_class=1)
    cases.append((small, "2 of 2 images are lower than the tokenizer's height 32 px"))
    mixed = make_folder(tmp_path / "mixed", per_class=1)
    Image.new("RGB", (64, 64)).save(mixed / "loose.png")
    cases.append((mixed, "move those into a class folder"))
    for root, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            data.build_dataset("folder", root, height=32)
        assert "\n" not in str(err.value)


def test_unreadable_files_are_skipped_and_counted(tmp_path):
    root = make_folder(tmp_path / "imgs", per_class=2)
    (root / "cats" / "broken.png").write_bytes(b"\x89PNG broken")
    ds = data.build_dataset("folder", root, height=32)
    assert len(ds) == 5
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        labels = [ds[i][1] for i in range(len(ds))]
    assert ds.skipped == 1 and labels == [0, 0, 1, 1, 1]  # the broken cat is replaced by the next file


def test_folder_is_in_the_one_registry_and_the_help():
    assert "folder" in data.DATASETS and data.dataset_names().endswith("lhq or folder")
    assert data.dataset_names() in tt.TokenizerTrainConfig.HELP["data"]


def readme_recipe() -> list[list[str]]:
    """The commands of the README's 'Train on your own images' block, as argv lists."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Train on your own images.*?```bash\n(.*?)```", text, re.S).group(1)
    return [shlex.split(line) for line in block.strip().splitlines()]


def test_the_readme_recipe_trains_both_models_and_samples_by_class_name(tmp_path, capsys):
    make_folder(tmp_path / "my_images", per_class=4)
    # Tiny runs of the README's commands: a few steps at a small batch, on the CPU.
    extra = {"minieq.train_tokenizer": ["--steps", "2", "--batch_size", "4", "--image_every", "0"],
             "minieq.cache_latents": [], "minieq.train_generator": ["--steps", "2", "--batch_size", "4"],
             "minieq.sample": ["--width", "48", "--steps", "2", "--seed", "0"]}
    mains = {"minieq.train_tokenizer": tt.main, "minieq.cache_latents": cache_latents.main,
             "minieq.train_generator": tg.main, "minieq.sample": sample.main}
    commands = readme_recipe()
    assert [c[2] for c in commands] == list(mains)
    for cmd in commands:
        argv = [str(tmp_path / a) if a.startswith(("my_images", "runs/", "mine.png")) else a for a in cmd[3:]]
        assert mains[cmd[2]]([*argv, *extra[cmd[2]], "--device", "cpu"]) == 0
    latents = torch.load(tmp_path / "runs/mine/latents.pt", weights_only=True)
    assert latents["classes"] == ["cats", "dogs"] and latents["latents"].shape == (16, 16, 16)
    gen = read_checkpoint(tmp_path / "runs/mine/generator/generator.pt")
    assert gen["class_names"] == ["cats", "dogs"] and gen["config"]["num_classes"] == 2
    with Image.open(tmp_path / "mine.png") as png:
        assert png.size == (48 + 4, 32 + 4)  # one 32 x 48 image inside the grid's 2-px padding

    # The generator encoding the folder on the fly, instead of the latent file.
    tok = str(tmp_path / "runs/mine/tokenizer/checkpoint.pt")
    assert tg.main(["--preset", "fast", "--tokenizer", tok, "--data", "folder", "--data_path",
                    str(tmp_path / "my_images"), "--steps", "1", "--batch_size", "4", "--device", "cpu",
                    "--out", str(tmp_path / "fly")]) == 0
    assert read_checkpoint(tmp_path / "fly" / "generator.pt")["class_names"] == ["cats", "dogs"]


def test_sample_takes_names_ids_and_lists_the_names_of_an_unknown_one(micro_pipe):
    pipe = Pipeline(micro_pipe.tokenizer, micro_pipe.generator, 0.3,
                    class_names=[f"c{i}" for i in range(micro_pipe.generator.config.num_classes)])
    assert pipe.class_ids(["c3", "1", 2]) == [3, 1, 2]
    with pytest.raises(ValueError, match="unknown class 'forst'; the classes are: c0, c1"):
        pipe.class_ids(["forst"])
    with pytest.raises(ValueError, match="stores no class names"):
        micro_pipe.class_ids(["forest"])


def test_sample_with_no_paths_uses_the_course_models(tmp_path, capsys):
    out = tmp_path / "s.png"
    assert sample.main(["--classes", "forest", "2", "--width", "32", "--steps", "1", "--seed", "0",
                        "--device", "cpu", "--out", str(out)]) == 0
    with Image.open(out) as png:
        assert png.size == (32 + 4, 2 * 32 + 6)  # two 32 x 32 images, one per row, 2-px padding
    with pytest.raises(SystemExit) as exit_:
        sample.main(["--classes", "forst", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "the classes are: mountains, dunes" in err
    with pytest.raises(SystemExit) as exit_:
        sample.main(["--generator", str(out), "--device", "cpu"])
    assert exit_.value.code == 2 and "give --tokenizer with --generator" in capsys.readouterr().err


def test_the_experiments_take_a_folder_as_their_reference(tmp_path):
    from argparse import Namespace

    from minieq.experiments.long_fidelity import reference_dataset

    root = make_folder(tmp_path / "imgs", per_class=2)
    ref = reference_dataset(Namespace(data="folder", data_path=str(root), seed=0), 32, 128, 0)
    assert len(ref) == 4 and ref[0][0].shape == (3, 32, 128)  # strips of the training width, centre crops
    assert torch.equal(ref[0][0], ref[0][0])  # each read crops again: equal only without random crops
    with pytest.raises(ValueError, match="gives square images"):
        reference_dataset(Namespace(data="imagenet", data_path=str(root), seed=0), 32, 128, 0)


def test_sample_pairs_the_course_tokenizer_with_a_generator_trained_on_its_latents(tmp_path):
    from minieq import pretrained
    from minieq.checkpoint import save_checkpoint
    from minieq.generator import Generator, GeneratorConfig

    course_tok = pretrained.pretrained_tokenizer("cpu")
    gen = Generator(GeneratorConfig.preset("tiny", token_dim=course_tok.config.embed_dim, num_classes=3,
                                           embed_dim=16, depth=1, num_heads=2, head_width=16, head_depth=1,
                                           num_sampling_steps=1))
    save_checkpoint(tmp_path / "gen.pt", gen, latent_scale=0.5, class_names=["x", "y", "z"])
    pipe = sample.load_pipeline("pretrained", str(tmp_path / "gen.pt"), torch.device("cpu"))
    assert pipe.class_ids(["z", "x"]) == [2, 0] and pipe.latent_scale == 0.5
    assert pipe.tokenizer.config == course_tok.config
    with pytest.raises(ValueError, match="give --generator too"):
        sample.load_pipeline(str(tmp_path / "tok.pt"), None, torch.device("cpu"))
