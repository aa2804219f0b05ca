"""Dataclass configs: presets, (de)serialisation into checkpoints, and argparse from fields.

Every model and training run is described by a dataclass. Presets differ only in numbers
(``tiny`` for CPU/CI, the paper sizes for GPUs), so full scale and tiny scale share one code path.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, ClassVar


class ConfigBase:
    """Mixin for config dataclasses: ``preset``, ``to_dict``, ``from_dict``, ``replace``.

    Subclasses define ``PRESETS: ClassVar[dict[str, dict]]`` mapping a preset name to field
    overrides of the dataclass defaults.
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    HELP: ClassVar[dict[str, str]] = {}  # field -> command-line help (minieq.cli shows it)
    # Fields renamed since files were written: old name -> new name, or None for a field that is
    # gone. Checkpoints store their config as a dict, so this table is the one place that lets
    # an old file load; from_dict applies it.
    RENAMED: ClassVar[dict[str, str | None]] = {}

    @classmethod
    def preset(cls, name: str, /, **overrides: Any):  # positional-only: a field may be called "name"
        if name not in cls.PRESETS:
            raise ValueError(
                f"unknown {cls.__name__} preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        return cls.from_dict({**cls.PRESETS[name], **overrides})

    def to_dict(self) -> dict[str, Any]:
        # Plain Python containers only, so the dict loads under torch.load(weights_only=True).
        return _plain(dataclasses.asdict(self))

    @classmethod
    def upgrade(cls, d: dict[str, Any]) -> dict[str, Any]:
        """``d`` with the old field names of :attr:`RENAMED` replaced (and removed fields dropped)."""
        out = {}
        for key, value in d.items():
            new = cls.RENAMED.get(key, key)
            if new is not None:
                out[new] = value
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        d = cls.upgrade(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"{cls.__name__} got unknown fields {sorted(unknown)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, value in d.items():
            sub = hints.get(key)
            if dataclasses.is_dataclass(sub) and isinstance(value, dict):
                value = sub.from_dict(value)
            kwargs[key] = value
        return cls(**kwargs)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)


def token_columns(width: int, column_width: int) -> int:
    """The number of token columns of an image ``width`` px wide: the one width rule of minieq.

    The width must be a multiple of the column width and hold at least two columns (the
    tokenizer's reflect padding needs two); anything else raises ``ValueError``.
    """
    if width % column_width or width < 2 * column_width:
        raise ValueError(f"image width {width} must be a multiple of the column width {column_width} "
                         f"px and at least {2 * column_width} px (two tokens, the tokenizer's minimum for its reflect "
                         "padding)")
    return width // column_width


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                       shown: Any = None, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--field`` flag per scalar/list field of a config dataclass (default: None).

    Flags left at None keep the preset's value, so a command line reads as "preset + overrides".
    Each flag's help is ``cls.HELP[field]`` plus the value in ``shown`` (the preset's config);
    a renamed field's old name (``cls.RENAMED``) stays accepted as a flag, hidden from
    ``--help``, and fields in ``skip`` get no flag.
    """
    hints = typing.get_type_hints(cls)
    old_names = {new: old for old, new in cls.RENAMED.items() if new is not None}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = hints[f.name]
        origin = typing.get_origin(kind)
        options: dict[str, Any] = {"default": None, "dest": f"{prefix}{f.name}"}
        if kind is bool:
            options.update(type=_str2bool, metavar="BOOL")
        elif kind in (int, float, str):
            options.update(type=kind)
        elif origin in (list, tuple):
            args = typing.get_args(kind)
            options.update(type=args[0] if args and args[0] in (int, float, str) else str, nargs="+")
        elif origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(kind):
            inner = [a for a in typing.get_args(kind) if a is not type(None)][0]
            items = typing.get_args(inner)  # list[int] | None -> (int,)
            if inner in (int, float, str):
                options.update(type=inner)
            elif typing.get_origin(inner) in (list, tuple) and items and items[0] in (int, float, str):
                options.update(type=items[0], nargs="+")
            else:
                continue
        else:
            continue  # dict fields (overrides) are Python-API only
        text = cls.HELP.get(f.name, f.name.replace("_", " "))
        if shown is not None:
            text += f" (default: {getattr(shown, f.name)!r})"
        parser.add_argument(f"--{prefix}{f.name}", help=text.replace("%", "%%"), **options)
        if f.name in old_names:
            parser.add_argument(f"--{prefix}{old_names[f.name]}", help=argparse.SUPPRESS, **options)


def overrides_from_args(args: argparse.Namespace, cls: type, prefix: str = "",
                        skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of ``cls`` (except ``skip``) that were given on the command line."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        value = getattr(args, f"{prefix}{f.name}", None)
        if value is not None:
            out[f.name] = value
    return out


def _str2bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")
