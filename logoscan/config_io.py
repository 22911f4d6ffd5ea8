"""Load frozen dataclass configs from YAML/TOML files, with dotted CLI overrides."""
from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import typing
from pathlib import Path
from typing import Any, TypeVar

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
    text = p.read_text()
    data = tomllib.loads(text) if p.suffix == ".toml" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
    data[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` with value parsed as YAML (numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def build(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build a (nested) frozen dataclass from a mapping, rejecting unknown keys by name."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    secret = sorted(k for k in unknown if SECRET_KEY.search(str(k)))
    if secret:
        raise ConfigError(f"{secret} in {where or cls.__name__} look like credentials: they do not belong in a "
                          "config file (committed with jobs, dumped next to the outputs). S3 credentials come "
                          "from the AWS chain (AWS_* environment, profile, instance role), Milvus's from MILVUS_TOKEN.")
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)} in {where or cls.__name__}; "
                          f"known: {sorted(names)}")
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        v, t = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(t) and isinstance(v, dict):
            v = build(t, v, f"{where}.{f.name}" if where else f.name)
        kw[f.name] = v
    try:
        return cls(**kw)
    except (TypeError, ValueError) as e:  # a dataclass's own check (__post_init__)
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def load(cls: type[T], path: str | None = None, overrides: list[str] | None = None) -> T:
    data = read_mapping(path)
    for o in overrides or []:
        set_dotted(data, *parse_override(o))
    return build(cls, data)


def to_dict(obj) -> dict:
    """The config as written next to the outputs and into logs: any ``user:password@`` in a URI
    (e.g. a Milvus server's) is removed."""
    return _redact(json.loads(json.dumps(dataclasses.asdict(obj), default=str)))


def _redact(v):
    if isinstance(v, dict):
        return {k: _redact(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_redact(x) for x in v]
    if isinstance(v, str) and "://" in v and "@" in v:
        return re.sub(r"://[^/@]*@", "://", v)
    return v
