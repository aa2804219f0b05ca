"""minieq checkpoints: atomic writes, the config inside, safe (weights_only) loads.

A checkpoint is a dict ``{"format": "minieq", "version": 1, "model_class": ..., "config": ...,
"state_dict": ..., **extra}`` written with ``torch.save`` to a temporary file that is then
renamed over the target, so a crash mid-write never leaves a truncated checkpoint behind.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "minieq"
VERSION = 1
_REGISTRY: dict[str, type] = {}


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: truncated, foreign, wrong version, wrong keys."""


def register_model(cls: type) -> type:
    """Class decorator: lets ``load_checkpoint`` rebuild ``cls`` from its stored config.

    The class must take its config dataclass as the only constructor argument, keep it as
    ``self.config``, and name the dataclass in ``cls.config_class``.
    """
    _REGISTRY[cls.__name__] = cls
    return cls


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **extra: Any) -> Path:
    """Save ``model`` (weights + config dataclass) and any ``extra`` entries atomically."""
    if type(model).__name__ not in _REGISTRY:
        raise TypeError(f"{type(model).__name__} is not registered with @register_model")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_class": type(model).__name__,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }
    return atomic_torch_save(payload, path)


class Placeholder:
    """What a weights-only load makes of an object in a foreign training checkpoint that no
    loader needs: a Lightning callback's state, an OmegaConf config, a path, a numpy scalar.

    It is built from the pickled arguments and state without importing or running the original
    class, so the load stays as safe as ``weights_only``; ``name`` says what it stands for.
    """
    name = "?"

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state

    def __repr__(self) -> str:
        return f"<placeholder for {self.name}>"


def _placeholders(path: Path, allowed: tuple) -> list[tuple[type, str]]:
    """One :class:`Placeholder` class per global that ``path`` names outside the allow-list."""
    known = {f"{g.__module__}.{g.__qualname__}" for g in allowed}
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 (not a zip checkpoint: the load itself reports the problem)
        return []
    return [(type(f"Placeholder[{name}]", (Placeholder,), {"name": name}), name)
            for name in names if name not in known]


def safe_torch_load(path: str | os.PathLike, extra_globals: tuple = (), mmap: bool = False,
                    placeholders: bool = False) -> Any:
    """``torch.load(weights_only=True)`` with errors that name the file and the problem.

    ``mmap=True`` maps the tensors' storage from the file instead of reading it into RAM, so a
    file larger than memory (ImageNet latents at paper size: ~40 GB) can still be indexed.
    ``placeholders=True`` (for official training checkpoints, whose training extras the official
    code loads with ``weights_only=False``) reads every object outside the allow-list as an inert
    :class:`Placeholder`; the weights must still be tensors (:func:`load_state_strict` checks).
    Globals of the modules torch blocks outright (``os``, ``sys``) still refuse the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    allowed = list(extra_globals) + (_placeholders(path, extra_globals) if placeholders else [])
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    # Legacy-format (non-zip) garbage fails deep inside the unpickler with struct.error,
    # UnicodeDecodeError, KeyError, ...: any failure here means "not a usable file".
    except Exception as err:  # noqa: BLE001
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        unsafe = [line for line in lines if "Unsupported global" in line or "is blocked" in line]
        if unsafe:
            raise CheckpointError(
                f"{path}: contains objects that are not allowed in a safe (weights_only) load "
                f"({unsafe[0].split('. Please')[0]})") from err
        # torch's generic "Weights only load failed ..." preamble hides the reason a few lines down.
        reason = [line for line in lines if not line.startswith(("Weights only", "Please file", "Check the"))]
        message = (reason or lines or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path}: not a readable PyTorch file (truncated or corrupt?): {message}") from err


# What each model class is called in messages to a user who passed the wrong file.
KINDS = {"ColumnTokenizer": "tokenizer", "Generator": "generator"}


def read_checkpoint(path: str | os.PathLike, expect: str | None = None) -> dict[str, Any]:
    """Load and validate a minieq checkpoint dict (no model is built).

    ``expect`` (a model class name, e.g. ``"ColumnTokenizer"``) refuses a checkpoint of any other
    kind with one error that names both kinds and the file.
    """
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a minieq checkpoint (official checkpoints load with "
            "minieq.load_official_tokenizer / minieq.load_official_generator)")
    if ckpt.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {ckpt.get('version')!r}, this minieq reads {VERSION}")
    for key in ("model_class", "config", "state_dict"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: minieq checkpoint without {key!r}")
    if expect is not None and ckpt["model_class"] != expect:
        raise CheckpointError(f"{path}: expected a {_kind(expect)} checkpoint, but the file holds a "
                              f"{_kind(ckpt['model_class'])}")
    return ckpt


def _kind(model_class: str) -> str:
    return f"{KINDS[model_class]} ({model_class})" if model_class in KINDS else model_class


def build_model(model_class: str, config: dict[str, Any], where: str = "checkpoint") -> nn.Module:
    """Instantiate a registered model class from its config dict.

    The registry is full by the time this runs: importing any minieq module first runs the
    package's ``__init__``, which imports the tokenizer and generator modules (they register).
    """
    if model_class not in _REGISTRY:
        raise CheckpointError(f"{where}: unknown model class {model_class!r}; known: {sorted(_REGISTRY)}")
    cls = _REGISTRY[model_class]
    return cls(cls.config_class.from_dict(config))


def load_state_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict`` that reports missing, unexpected and mis-shaped keys in one error."""
    not_tensors = sorted(k for k, v in state_dict.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise CheckpointError(f"{where}: weights that are not tensors ({len(not_tensors)}): {not_tensors[:20]}")
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(state_dict) if own[k].shape != state_dict[k].shape)
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{where}: weights do not match the model.\n"
            f"  missing ({len(missing)}): {missing[:20]}\n"
            f"  unexpected ({len(unexpected)}): {unexpected[:20]}\n"
            f"  wrong shape ({len(shapes)}): {shapes[:20]}")
    model.load_state_dict(state_dict)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    use_ema: bool = True, expect: str | None = None) -> nn.Module:
    """Rebuild the model stored at ``path`` from its config and load its weights.

    If the file holds EMA weights (``ema_state_dict``) and ``use_ema`` is true they are used,
    since EMA weights are what inference uses throughout the paper. ``expect``: as in
    :func:`read_checkpoint`.
    """
    return model_from_checkpoint(read_checkpoint(path, expect=expect), str(path), map_location, use_ema)


def model_from_checkpoint(ckpt: dict[str, Any], where: str = "checkpoint",
                          map_location: str | torch.device = "cpu", use_ema: bool = True) -> nn.Module:
    """The model of a checkpoint dict already read by :func:`read_checkpoint`, as
    :func:`load_checkpoint` builds it: for callers that also need the dict's other entries
    (latent scale, class names), so a large file is read once."""
    model = build_model(ckpt["model_class"], ckpt["config"], where=where)
    state = ckpt.get("ema_state_dict") if use_ema and ckpt.get("ema_state_dict") else ckpt["state_dict"]
    load_state_strict(model, state, where=where)
    return model.to(map_location).eval()
