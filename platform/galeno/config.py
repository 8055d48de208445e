"""One config system for every Galeno job.

Configs are plain dataclasses whose fields carry their own docstrings (litgpt's habit): the
docstring written under a field becomes its ``--help`` line. A YAML preset is a small overlay on
the defaults, and trailing ``dotted.key=value`` arguments override either::

    python jobs/clean_corpus.py --config configs/corpus/sample.yaml minhash.threshold=0.85

Values on the command line are parsed as YAML scalars (``true``, ``3``, ``[a, b]``), then
coerced to the field's declared type, so a typo fails at start-up rather than an hour in.
Ray's ``train_loop_config`` wants plain dicts: :func:`to_dict` / :func:`from_dict` round-trip.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import inspect
import json
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the declared config."""


# --------------------------------------------------------------------------- field docs
def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written right under dataclass fields, by field name (inherited ones too)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _hints(cls: type) -> dict[str, Any]:
    # no globalns: each class of the MRO resolves its own annotations in its own module (inherited fields)
    return typing.get_type_hints(cls)


# --------------------------------------------------------------------------- coercion
def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: {value!r} fits none of {_type_name(tp)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, _where=where)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        val_tp = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, val_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], _where: str = "") -> T:
    """Build ``cls`` from a (possibly partial) dict; unknown keys are errors, not ignored."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names
    if unknown:
        prefix = f"{_where}." if _where else ""
        raise ConfigError(
            f"unknown config key(s) {sorted(prefix + k for k in unknown)}; "
            f"{cls.__name__} has {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{_where}.{name}" if _where else name)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{_where or cls.__name__}: {err}") from err


def to_dict(obj: Any) -> Any:
    """Plain, JSON-able dict of a config (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def config_hash(obj: Any, length: int = 12) -> str:
    """Stable short hash of a config's content (names output folders, tags MLflow runs).

    A top-level ``tracking`` group is left out: where a run is recorded does not change what it computes.
    """
    tree = to_dict(obj)
    if isinstance(tree, dict):
        tree.pop("tracking", None)
    blob = json.dumps(tree, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


# --------------------------------------------------------------------------- overrides
def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar/list (``3``, ``true``, ``[a, b]``, ``null``)."""
    import yaml

    try:
        return yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text


def apply_override(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.0.c`` in a nested dict/list tree, creating dicts on the way."""
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            idx = int(part)
            while len(node) <= idx:
                node.append({})
            node = node[idx]
            continue
        if part not in node or node[part] is None:
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        idx = int(last)
        while len(node) <= idx:
            node.append(None)
        node[idx] = value
    else:
        node[last] = value


def load_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A YAML preset as a mapping. ``extends: OTHER.yaml`` (relative to this file) layers it over OTHER."""
    import yaml

    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: 'extends' loops back on itself ({' -> '.join(str(p) for p in _seen)})")
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must be a mapping at top level")
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'extends' names one preset file")
    parent = path.parent / base
    if not parent.is_file():
        raise ConfigError(f"{path}: 'extends: {base}' names no file ({parent} does not exist)")
    layered = load_yaml(parent, (*_seen, path.resolve()))
    merge(layered, data)
    return layered


def load(cls: type[T], config: str | Path | None = None,
         overrides: Iterable[str] = (), extra: Mapping[str, Any] | None = None) -> T:
    """Defaults, then the YAML preset, then ``extra`` (from flags), then dotted overrides."""
    data: dict[str, Any] = to_dict(cls())
    if config:
        merge(data, load_yaml(config))
    if extra:
        merge(data, dict(extra))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, _, raw = item.partition("=")
        apply_override(data, key.strip(), parse_value(raw))
    return from_dict(cls, data)


def merge(base: dict[str, Any], over: Mapping[str, Any]) -> None:
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value


# --------------------------------------------------------------------------- help + CLI
def help_text(cls: type, prefix: str = "") -> str:
    """Every field, recursively: dotted name, type, default and its docstring."""
    lines = []
    docs = field_docs(cls)
    hints = _hints(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            lines.append(f"  {name}.*  {docs.get(f.name, '')}".rstrip())
            lines.append(help_text(tp, prefix=name + "."))
            continue
        default = json.dumps(to_dict(getattr(defaults, f.name)), ensure_ascii=False)
        lines.append(f"  {name}: {_type_name(tp)} = {default}")
        if docs.get(f.name):
            lines.extend("      " + ln for ln in textwrap.wrap(docs[f.name], 90))
    return "\n".join(line for line in lines if line)


@dataclasses.dataclass
class Flag:
    """A job-specific shorthand flag that turns into config values (e.g. ``--output DIR``)."""

    name: str
    help: str
    apply: Callable[[dict[str, Any], list[str]], None]
    metavar: str = "VALUE"
    repeat: bool = False


def set_field(dotted: str) -> Callable[[dict[str, Any], list[str]], None]:
    """Flag action: the flag's (last) value sets one dotted field."""
    def apply(data: dict[str, Any], values: list[str]) -> None:
        apply_override(data, dotted, values[-1])
    return apply


def parse_cli(cls: type[T], argv: Sequence[str] | None = None, *, prog: str | None = None,
              description: str = "", flags: Sequence[Flag] = ()) -> T:
    """``--config FILE`` (repeatable), the job's shorthand flags, then trailing ``key.path=value`` overrides."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config fields (override any with key.path=value):\n" + help_text(cls))
    parser.add_argument("--config", metavar="FILE", action="append",
                        help="YAML preset layered over the defaults (repeatable: later files layer over earlier ones)")
    for flag in flags:
        parser.add_argument(flag.name, metavar=flag.metavar, help=flag.help,
                            action="append" if flag.repeat else "store")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="dotted overrides applied last")
    args = parser.parse_intermixed_args(argv)  # overrides may come before and after flags
    extra: dict[str, Any] = {}
    for path in args.config or ():
        merge(extra, load_yaml(path))
    for flag in flags:
        value = getattr(args, flag.name.lstrip("-").replace("-", "_"))
        if value is not None:
            flag.apply(extra, value if isinstance(value, list) else [value])
    try:
        return load(cls, None, args.overrides, extra=extra)
    except ConfigError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits
