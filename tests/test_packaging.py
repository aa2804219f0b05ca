"""Packaging: environment.yml agrees with pyproject.toml + constraints.txt; no hard-coded CUDA; README."""
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CONDA_ONLY = {"python", "pip", "pytorch-cuda", "cuda", "cpuonly"}   # not Python packages of ours
CONDA_TO_PIP = {"pytorch": "torch"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _split(requirement: str, sep: str) -> tuple[str, str | None]:
    """'name==1.2' (pip) or 'name=1.2' (conda) -> (normalised name, version or None)."""
    name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]
    version = requirement.split(sep, 1)[1].strip() if sep in requirement else None
    return _norm(name), version


def _pyproject_packages() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    names, todo = set(), list(project["dependencies"]) + list(extras["dev"])
    while todo:
        req = todo.pop()
        self_extra = re.fullmatch(r"minieq\[(\w+)\]", req.strip())
        if self_extra:                       # "minieq[metrics]" pulls in another extra
            todo += extras[self_extra.group(1)]
        else:
            names.add(_split(req, "==")[0])
    return names


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = _split(line, "==")
            pins[name] = version
    return pins


def _environment() -> dict[str, str | None]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert env["channels"][:2] == ["pytorch", "nvidia"]
    packages = {}
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            for req in dep["pip"]:
                if not req.startswith("-e"):
                    name, version = _split(req, "==")
                    packages[name] = version
        else:
            name, version = _split(dep, "=")
            if name not in CONDA_ONLY:
                packages[CONDA_TO_PIP.get(name, name)] = version
    return packages


def test_environment_lists_the_pyproject_packages():
    env = _environment()
    assert set(env) == _pyproject_packages(), (
        f"only in environment.yml: {sorted(set(env) - _pyproject_packages())}; "
        f"only in pyproject: {sorted(_pyproject_packages() - set(env))}")


def test_environment_versions_match_constraints():
    env, pins = _environment(), _constraints()
    assert set(pins) == _pyproject_packages(), "constraints.txt must pin every dependency"
    mismatched = {name: (env[name], pins[name]) for name in pins if env.get(name) != pins[name]}
    assert not mismatched, f"environment.yml vs constraints.txt: {mismatched}"


def test_environment_python_and_cuda():
    deps = [d for d in yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"] if isinstance(d, str)]
    assert "python=3.11" in deps
    assert any(d.startswith(("pytorch-cuda", "cuda")) for d in deps)


def test_no_hard_coded_cuda_calls():
    pattern = "." + "cuda("  # spelled in two parts so that this file does not match itself
    files = [p for folder in ("minieq", "tests") for p in (REPO / folder).rglob("*.py")]
    files += [p for folder in ("notebooks", "solutions") for p in (REPO / folder).glob("*.ipynb")]
    offenders = [str(p.relative_to(REPO)) for p in files if pattern in p.read_text()]
    assert not offenders, f"use devices from inputs/parameters instead of {pattern}): {offenders}"


def test_readme_gives_the_two_commands():
    readme = REPO / "README.md"
    if not readme.is_file():
        pytest.skip("README.md not written yet")
    text = readme.read_text()
    assert "make demo" in text and "make test" in text
