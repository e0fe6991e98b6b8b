"""Validate report records against the JSON Schemas in report_schema/.

Schemas refer to each other by ``$id`` (the train and benchmark reports share
environment.schema.json), resolved from one registry of every file there."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jsonschema
from referencing import Registry, Resource

# report_schema/ sits at the top of the source tree (a promise to users), so
# the package is installed in editable mode (Makefile, Dockerfile).
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "report_schema"


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    path = SCHEMA_DIR / f"{name}.schema.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@lru_cache(maxsize=None)
def _registry() -> Registry:
    schemas = [load_schema(path.name[:-len(".schema.json")]) for path in sorted(SCHEMA_DIR.glob("*.schema.json"))]
    return Registry().with_resources((schema["$id"], Resource.from_contents(schema)) for schema in schemas)


def validate_report(record: dict, name: str) -> None:
    """Raise jsonschema.ValidationError if ``record`` does not match schema ``name``."""
    jsonschema.Draft202012Validator(load_schema(name), registry=_registry()).validate(record)
