"""Validate report records against the JSON Schemas in report_schema/."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jsonschema

# report_schema/ sits at the top of the source tree (a promise to users), so
# the package is installed in editable mode (Makefile, Dockerfile).
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "report_schema"


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    path = SCHEMA_DIR / f"{name}.schema.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validate_report(record: dict, name: str) -> None:
    """Raise jsonschema.ValidationError if ``record`` does not match schema ``name``."""
    jsonschema.Draft202012Validator(load_schema(name)).validate(record)
