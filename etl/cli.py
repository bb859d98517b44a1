"""The one dataclass -> argparse helper of every job and benchmark (pure Python: no Spark, torch).

Each field of a config dataclass becomes a ``--kebab-case`` option. Field metadata: ``help``
(``None`` hides a test hook from --help), ``choices``, ``required``, ``option`` (the hook for an
option other than one flag per field, see ``Extra``). ``bool`` fields become
``--x/--no-x``; ``int``, ``float``, ``str``, ``Path`` and ``X | None`` fields are parsed by their
type. ``--help`` shows every default. Errors are one line ``<prog>: error: ...`` and exit code 2
(no usage dump); a config's ``validate()`` (when it has one) runs after parsing and its
ValueError is such an error too.

With ``config_file=True`` a job takes ``--config FILE``: a JSON object of field values; flags
given explicitly override the file, unknown keys are an error.

    params: dict[str, str] = field(  # a repeatable --param KEY=VALUE filling the dict
        default_factory=dict, metadata={"help": "...", "option": KeyValues("--param", "params")}
    )
    cfg = parse(TrainConfig, argv, config_file=True)
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, Field, dataclass, fields
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
SCALARS = (bool, int, float, str, Path)
CONFIG_DEST = "config_file"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit code 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to each option's help unless it already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default:" in text
            or action.default is argparse.SUPPRESS
            or action.required
            or not action.option_strings
        ):
            return text
        shown = repr(action.default) if action.default == "" else str(action.default)
        return f"{text} (default: {shown.replace('%', '%%')})".strip()


class Extra(Protocol):
    """An option that fills the field ``field`` other than with one plain flag (a field's
    metadata ``option``): it adds itself to the parser, then makes the field's value."""

    field: str

    def add(self, parser: argparse.ArgumentParser, help_text: str) -> None: ...

    def value(self, parsed: Any, from_file: Any, parser: argparse.ArgumentParser) -> Any: ...


@dataclass(frozen=True)
class KeyValues:
    """Repeatable ``FLAG KEY=VALUE`` into the dict field ``field`` (values stay strings, the
    last of a key wins; the ``--config`` file's dict for the field is the base)."""

    flag: str
    field: str
    metavar: str = "KEY=VALUE"

    def add(self, parser: argparse.ArgumentParser, help_text: str) -> None:
        parser.add_argument(
            self.flag,
            dest=self.field,
            action="append",
            default=[],
            metavar=self.metavar,
            help=f"{help_text}; repeatable (default: none)",
        )

    def value(self, parsed: list[str], from_file: Any, parser: argparse.ArgumentParser) -> dict:
        if from_file is not None and not isinstance(from_file, dict):
            parser.error(f"--config: {self.field} must be an object, got {from_file!r}")
        values = dict(from_file or {})
        for item in parsed:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                parser.error(f"{self.flag} expects {self.metavar}, got {item!r}")
            values[key.strip()] = value.strip()
        return values


def help_text(f: Field) -> str:
    """The field's help for argparse (% escaped); its name where it has none."""
    return (f.metadata.get("help") or f.name.replace("_", " ")).replace("%", "%%")


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def scalar_type(hint: Any) -> type:
    """The parsing type of a field hint: a scalar, or the scalar of ``X | None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    if hint not in SCALARS:
        raise TypeError(f"no command-line form for {hint!r}")
    return hint


def has_default(f: Field) -> bool:
    return f.default is not MISSING or f.default_factory is not MISSING


def default_of(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else None


def extras_of(configs: Sequence[type]) -> list[Extra]:
    """The ``option`` hooks of the fields of ``configs``."""
    return [f.metadata["option"] for c in configs for f in fields(c) if "option" in f.metadata]


def add_options(parser: argparse.ArgumentParser, config: type) -> None:
    """One option per field of the dataclass ``config`` (its ``option`` hook where it has one)."""
    hints = typing.get_type_hints(config)
    for f in fields(config):
        if "option" in f.metadata:
            f.metadata["option"].add(parser, help_text(f))
            continue
        try:
            kind = scalar_type(hints[f.name])
        except TypeError as exc:
            raise TypeError(f"{config.__name__}.{f.name}: {exc}") from None
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": default_of(f),
            "help": argparse.SUPPRESS if f.metadata.get("help", "") is None else help_text(f),
        }
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            kwargs["required"] = bool(f.metadata.get("required")) or not has_default(f)
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag_of(f.name), **kwargs)


def build_parser(
    *configs: type,
    prog: str | None = None,
    description: str | None = None,
    config_file: bool = False,
) -> Parser:
    """A one-line-error parser with the options of every dataclass in ``configs``."""
    names = [f.name for c in configs for f in fields(c)]
    if len(names) != len(set(names)):
        shared = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"configs share field names: {shared}")
    parser = Parser(prog=prog, description=description, formatter_class=DefaultsFormatter)
    for config in configs:
        add_options(parser, config)
    if config_file:
        parser.add_argument(
            "--config",
            dest=CONFIG_DEST,
            metavar="FILE",
            default=None,
            help="JSON object of option values (fields, snake_case); flags given override it",
        )
    return parser


def parse(config: type[T], argv: Sequence[str] | None = None, **options: Any) -> T:
    """``config`` from the command line (``options``: those of ``build_parser``)."""
    return parse_all([config], argv, **options)[0]


def parse_all(
    configs: Sequence[type], argv: Sequence[str] | None = None, **options: Any
) -> tuple[Any, ...]:
    """One instance per dataclass of ``configs`` from one command line; each one validated."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extras = extras_of(configs)
    parser = build_parser(*configs, **options)
    from_file = read_config_file(parser, argv, configs) if options.get("config_file") else {}
    plain = {k: v for k, v in from_file.items() if k not in {e.field for e in extras}}
    parser.set_defaults(**plain)
    for action in parser._actions:
        if action.dest in plain:
            action.required = False  # the file gives it
    values = vars(parser.parse_args(argv))
    for extra in extras:
        values[extra.field] = extra.value(values[extra.field], from_file.get(extra.field), parser)
    return tuple(build(config, values, parser) for config in configs)


def build(config: type[T], values: dict[str, Any], parser: argparse.ArgumentParser) -> T:
    """An instance of ``config`` from parsed ``values``; a ValueError is a one-line error."""
    try:
        instance = config(**{f.name: values[f.name] for f in fields(config) if f.init})
        if callable(getattr(instance, "validate", None)):
            instance.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return instance


def read_config_file(
    parser: argparse.ArgumentParser, argv: Sequence[str], configs: Sequence[type]
) -> dict[str, Any]:
    """The field values of ``--config FILE`` (empty without it), checked against the fields."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", dest=CONFIG_DEST, default=None)
    path = pre.parse_known_args(argv)[0].config_file
    if path is None:
        return {}
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"--config {path}: {exc}")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a JSON object, got {type(values).__name__}")
    known = {f.name: (c, f) for c in configs for f in fields(c)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        parser.error(f"--config {path}: unknown keys {unknown}")
    try:
        return {k: file_value(*known[k], v) for k, v in values.items()}
    except (TypeError, ValueError) as exc:
        parser.error(f"--config {path}: {exc}")


def file_value(config: type, f: Field, value: Any) -> Any:
    """A JSON value for field ``f``, converted to the field's type (TypeError when it is not)."""
    hint = typing.get_type_hints(config)[f.name]
    try:
        kind = scalar_type(hint)
    except TypeError:  # a structured field (e.g. a dict for an extra): taken as it is
        return value
    if value is None and hint is not kind:
        return None
    ok = {bool: (bool,), int: (int,), float: (int, float), str: (str,), Path: (str,)}[kind]
    if not isinstance(value, ok) or (kind is not bool and isinstance(value, bool)):
        raise TypeError(f"{f.name} must be {kind.__name__}, got {value!r}")
    if value not in f.metadata.get("choices", (value,)):
        raise ValueError(f"{f.name} must be one of {list(f.metadata['choices'])}, got {value!r}")
    return kind(value)


def carry_over(source: Any, target: type[T], **values: Any) -> T:
    """A ``target`` dataclass from the fields of ``source`` it has too (same name, same
    meaning), then ``values``."""
    names = {f.name for f in fields(target) if f.init}
    shared = {f.name: getattr(source, f.name) for f in fields(source) if f.name in names}
    return target(**{**shared, **values})


def to_argv(config: Any, names: Sequence[str] | None = None) -> list[str]:
    """The flags that reproduce ``config``: of the fields ``names`` in that order, else of every
    field that differs from its default. None values are left out."""
    changed = [f.name for f in fields(config) if getattr(config, f.name) != default_of(f)]
    chosen = changed if names is None else names
    argv: list[str] = []
    for name in chosen:
        value = getattr(config, name)
        if isinstance(value, bool):
            argv.append(flag_of(name) if value else "--no-" + flag_of(name)[2:])
        elif value is not None:
            argv += [flag_of(name), str(value)]
    return argv
