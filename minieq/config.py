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
    def from_dict(cls, d: dict[str, Any]):
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


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                       shown: Any = None, flags: dict[str, str] | None = None,
                       skip: tuple[str, ...] = ()) -> None:
    """Add one ``--field`` flag per scalar/list field of a config dataclass (default: None).

    Flags left at None keep the preset's value, so a command line reads as "preset + overrides".
    Each flag's help is ``cls.HELP[field]`` plus the value in ``shown`` (the preset's config);
    ``flags`` renames a field's flag (the old spelling stays accepted, hidden from ``--help``)
    and fields in ``skip`` get no flag.
    """
    hints = typing.get_type_hints(cls)
    flags = flags or {}
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
        flag = f"--{prefix}{flags.get(f.name, f.name)}"
        parser.add_argument(flag, help=text.replace("%", "%%"), **options)
        if f.name in flags:
            parser.add_argument(f"--{prefix}{f.name}", help=argparse.SUPPRESS, **options)


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
