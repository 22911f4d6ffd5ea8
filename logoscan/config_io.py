"""Load frozen dataclass configs from YAML/TOML files, with dotted CLI overrides."""
from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


SECRET_KEY = re.compile(r"secret|password|passwd|token|access_key|credential|api_key", re.I)


def read_mapping(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = p.read_text()
        data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not a readable {'TOML' if p.suffix == '.toml' else 'YAML'} file: "
                          f"{' '.join(str(e).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"bad config key {dotted!r}")
    for n, k in enumerate(keys[:-1]):
        data = data.setdefault(k, {})
        if not isinstance(data, dict):
            raise ConfigError(f"cannot set {dotted!r}: {'.'.join(keys[:n + 1])} is a value, not a section")
    data[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` with value parsed as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    k, v = text.split("=", 1)
    try:
        return k.strip(), yaml.safe_load(v)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({' '.join(str(e).split())})") from None


def _field_dataclass(t):
    """The dataclass a field holds, directly, as the values of a ``dict[str, X]`` ("mapping") or as
    the items of a ``tuple[X, ...]`` / ``list[X]`` ("sequence")."""
    if dataclasses.is_dataclass(t):
        return t, False
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]):
        return args[1], True
    if origin in (tuple, list) and args and dataclasses.is_dataclass(args[0]):
        return args[0], "sequence"
    return None, False


def check_keys(cls: type, data: dict[str, Any], where: str = "") -> None:
    """Refuse unknown keys by name at every depth (the known ones listed), and keys that look
    like credentials with a message saying where those belong, before any value is looked at."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping of keys, not {data!r}")
    hints = typing.get_type_hints(cls, include_extras=False)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    secret = sorted(str(k) for k in unknown if SECRET_KEY.search(str(k)))
    if secret:
        raise ConfigError(f"{secret} in {where or cls.__name__} look like credentials: they do not belong in a "
                          "config file (committed with jobs, dumped next to the outputs). S3 credentials come "
                          "from the AWS chain (AWS_* environment, profile, instance role), Milvus's from MILVUS_TOKEN.")
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(map(str, unknown))} in {where or cls.__name__}; "
                          f"known: {sorted(names)}")
    for name, v in data.items():
        sub, mapping = _field_dataclass(hints[name])
        at = f"{where}.{name}" if where else name
        if sub is None or v is None:
            continue
        if mapping == "sequence":
            if not isinstance(v, (list, tuple)):
                raise ConfigError(f"{at} must be a list, not {v!r}")
            for i, x in enumerate(v):
                if x is not None and not dataclasses.is_dataclass(x):
                    check_keys(sub, x, f"{at}.{i}")
        elif not mapping:
            if not dataclasses.is_dataclass(v):
                check_keys(sub, v, at)
        elif isinstance(v, dict):
            for k, x in v.items():
                if x is not None and not dataclasses.is_dataclass(x):
                    check_keys(sub, x, f"{at}.{k}")
        else:
            raise ConfigError(f"{at} must be a mapping, not {v!r}")


def _describe(e: pydantic.ValidationError, where: str) -> str:
    """pydantic's errors as lines naming the key, the value given and what is allowed."""
    lines = []
    for err in e.errors(include_url=False):
        key = ".".join(str(p) for p in (*([where] if where else []), *err["loc"]))
        given = err.get("input")
        lines.append(f"{key or 'config'}={given!r}: {err['msg']}" if err["type"] != "missing"
                     else f"{key}: required")
    return "; ".join(lines)


def build(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build a (nested) frozen dataclass from a mapping: unknown keys refused by name, every
    value checked against its field's type and range (pydantic), the first bad one named."""
    check_keys(cls, data, where)
    try:
        return pydantic.TypeAdapter(cls).validate_python(data)
    except pydantic.ValidationError as e:
        raise ConfigError(f"bad config value: {_describe(e, where)}") from None
    except (TypeError, ValueError) as e:  # a dataclass's own check (__post_init__)
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def apply(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` overrides (``--set``) on top of a config mapping, in order; ``data`` is changed."""
    for o in overrides or []:
        set_dotted(data, *parse_override(o))
    return data


def load(cls: type[T], path: str | None = None, overrides: list[str] | None = None) -> T:
    return build(cls, apply(read_mapping(path), overrides))


def with_overrides(cfg: T, overrides: list[str] | None) -> T:
    """``cfg`` with ``--set KEY=VALUE`` overrides on top, checked like a config file's keys."""
    if not overrides:
        return cfg
    return build(type(cfg), apply(_plain(cfg), overrides))


def to_dict(obj) -> dict:
    """The config as written next to the outputs and into logs: any ``user:password@`` in a URI
    (e.g. a Milvus server's) is removed."""
    return _redact(_plain(obj))


def _plain(obj) -> dict:
    """A config as plain JSON values (tuples as lists, anything else JSON lacks as its str)."""
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


def _redact(v):
    if isinstance(v, dict):
        return {k: _redact(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_redact(x) for x in v]
    if isinstance(v, str) and "://" in v and "@" in v:
        return re.sub(r"://[^/@]*@", "://", v)
    return v
