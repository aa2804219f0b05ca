"""The repository stands on its own: no machine paths, no links out, citations that resolve.

Scanned: every git-tracked text file, every notebook (cell sources and stored outputs, images
excepted), and the metadata (every non-tensor value) of the shipped weight files.
"""
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = "docs/official_code.md"

# An absolute path on a particular machine: a home, work, scratch or temp folder (POSIX or Windows).
# The look-behind skips the same words inside a URL or a longer path (a web page under a "home" folder).
# System paths that are the same everywhere (/dev/null, /usr/bin/time) and example data locations in
# the training commands (/data/imagenet) are not machine-specific and are not matched.
MACHINE_PATH = re.compile(
    r"(?<![\w.~/-])/(?:work|root|home|tmp|Users|mnt|scratch|private/var|var/folders)/[\w.-]"
    r"|\b[A-Za-z]:\\\\?Users\\")
# The outside design spec and numbered sections of it (spelled in parts so this file does not match).
OUTSIDE_SPEC = re.compile("reference" + r"-spec|§\s?\d")
# A relative path that climbs out of the repository to its sibling folders.
CLIMB_OUT = re.compile(r"\.\./(?:\.\./)*shared\b")
# Markdown links and images whose target is a relative path: [text](target) / ![alt](target).
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
# A citation of the official-code page, optionally followed by more anchors: "...md#a, #b".
CITATION = re.compile(re.escape("official_code.md") + r"#([\w-]+)((?:, #[\w-]+)*)")


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in out.stdout.decode().split("\0") if name]


def text_of(path: Path) -> str | None:
    """The file's text, or None for a binary file (weights, images)."""
    raw = path.read_bytes()
    if b"\0" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def notebook_strings(path: Path):
    """(where, kind, text) for every cell source and every stored text output of a notebook."""
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        yield f"cell {i}", cell["cell_type"], "".join(cell["source"])
        for output in cell.get("outputs", []):
            if "text" in output:
                yield f"cell {i} output", "output", "".join(output["text"])
            for mime, value in output.get("data", {}).items():
                if not mime.startswith("image/"):  # base64 images can hold any letters
                    text = value if isinstance(value, str) else "".join(value)
                    yield f"cell {i} output {mime}", "output", text


def documents():
    """(path, where, text, is_markdown) for every scanned piece of text in the repository."""
    for path in tracked_files():
        if not path.is_file():
            continue
        if path.suffix == ".ipynb":
            for where, kind, text in notebook_strings(path):
                yield path, where, text, kind == "markdown"
        else:
            text = text_of(path)
            if text is not None:
                yield path, "", text, path.suffix == ".md"


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def official_anchors() -> set[str]:
    text = (REPO / OFFICIAL).read_text()
    return {github_slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def _hits(pattern: re.Pattern, skip_self: bool = True) -> list[str]:
    me = Path(__file__).resolve()
    found = []
    for path, where, text, _ in documents():
        if skip_self and path.resolve() == me:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if pattern.search(line):
                name = str(path.relative_to(REPO)) + (f" {where}" if where else f":{lineno}")
                found.append(f"{name}: {line.strip()[:120]}")
    return found


def test_machine_path_pattern():
    """The pattern catches machine paths and leaves alone the strings that look a bit like them."""
    # The examples are assembled at run time, so that this file itself holds no machine path.
    root = "/"
    for bad in (f"{root}work/main/runs/course", f"see {root}home/me/x.pt", f"({root}tmp/abc)",
                f"'{root}root/.cache/x'", "C:\\" + "Users\\me\\x"):
        assert MACHINE_PATH.search(bad), bad
    for fine in (f"2>{root}dev/null", f"{root}usr/bin/time", f"https://example.org{root}home/page", f"--data_path {root}data/x",
                 "runs/course/fast", "~/weights/vgg16.pth", f"a{root}tmp/b"):
        assert not MACHINE_PATH.search(fine), fine


def test_no_machine_paths_in_tracked_files_or_notebook_outputs():
    found = _hits(MACHINE_PATH)
    assert not found, "absolute machine paths (write a path relative to the repository):\n" + "\n".join(found)


def test_no_citation_of_the_outside_spec():
    found = _hits(OUTSIDE_SPEC) + _hits(CLIMB_OUT)
    assert not found, (f"cite a section of {OFFICIAL} (e.g. {OFFICIAL}#kv-cache) instead of the outside "
                       "spec, and do not point at folders beside the repository:\n" + "\n".join(found))


def test_markdown_links_stay_inside_the_repository():
    bad = []
    for path, where, text, is_markdown in documents():
        if not is_markdown:
            continue
        for target in MD_LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # a URL (https:, mailto:) or an anchor in the same page
            file_part = target.split("#")[0]
            resolved = (path.parent / file_part).resolve()
            name = f"{path.relative_to(REPO)} {where}".strip()
            if not resolved.is_relative_to(REPO):
                bad.append(f"{name}: {target} leaves the repository")
            elif not resolved.exists():
                bad.append(f"{name}: {target} does not exist")
    assert not bad, "\n".join(bad)


def test_official_code_citations_resolve():
    anchors = official_anchors()
    assert {"kv-cache", "tokenizer-checkpoint", "generator-checkpoint", "known-bugs-and-quirks"} <= anchors
    cited, missing = 0, []
    for path, where, text, _ in documents():
        for first, more in CITATION.findall(text):
            for anchor in [first] + re.findall(r"#([\w-]+)", more):
                cited += 1
                if anchor not in anchors:
                    missing.append(f"{path.relative_to(REPO)} {where}: #{anchor}")
    assert cited > 50, f"only {cited} citations of {OFFICIAL} found; the scan is broken"
    assert not missing, f"anchors not in {OFFICIAL}:\n" + "\n".join(missing)


def _strings(value, where="metadata"):
    """(where, string) for every string inside nested dicts / lists / tuples; tensors skipped."""
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key, f"{where} key")
            yield from _strings(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _strings(item, f"{where}[{i}]")


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "minieq" / "weights").glob("*.pt")))
def test_shipped_weight_metadata_has_no_machine_paths(name):
    ckpt = torch.load(REPO / "minieq" / "weights" / name, map_location="cpu", weights_only=True)
    strings = list(_strings(ckpt))
    assert strings, "the file holds no metadata at all: the scan found nothing to check"
    bad = [f"{where}: {s[:120]}" for where, s in strings if MACHINE_PATH.search(s)]
    assert not bad, f"{name} stores absolute machine paths (re-export it with relative ones):\n" + "\n".join(bad)


def test_architecture_page_lists_every_module():
    """docs/architecture.md has a row for every module and subpackage of minieq."""
    table = {row.split("|")[1].strip() for row in (REPO / "docs" / "architecture.md").read_text().splitlines()
             if row.startswith("| `")}
    names = set()
    for path in tracked_files():
        parts = path.relative_to(REPO).parts
        if parts[0] != "minieq" or len(parts) < 2 or parts[1] in ("__init__.py", "weights"):
            continue
        if len(parts) == 2 and path.suffix == ".py":
            names.add(f"`{parts[1]}`")
        elif len(parts) > 2:
            names.add(f"`{parts[1]}/`")
    assert len(names) > 30, f"found only {len(names)} modules: the scan is broken"
    missing = sorted(names - table)
    assert not missing, f"add a row to docs/architecture.md for: {missing}"
