"""Validate reports against the JSON Schemas in report_schema/.

Each schema file stands alone (what they share, the environment record, is
repeated in each one's ``$defs``), so any JSON Schema validator checks a
report with nothing but that file:

    jsonschema.validate(report, json.load(open("report_schema/train_report.schema.json")))

``python -m visionbench.report validate FILE...`` checks reports of any
kind (read from the file's ``kind``), one line per file.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jsonschema

# report_schema/ sits at the top of the source tree (a promise to users), so
# the package is installed in editable mode (Makefile, Dockerfile).
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "report_schema"
# a report's "kind" -> its schema
SCHEMA_OF_KIND = {"train": "train_report", "benchmark": "benchmark_report", "data_prep": "data_prep_report"}


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    path = SCHEMA_DIR / f"{name}.schema.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validate_report(record: dict, name: str) -> None:
    """Raise jsonschema.ValidationError if ``record`` does not match schema ``name``."""
    jsonschema.Draft202012Validator(load_schema(name)).validate(record)
