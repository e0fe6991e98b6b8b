"""Validate reports against the JSON Schemas in report_schema/.

Each schema file stands alone (what they share, the environment record, is
repeated in each one's ``$defs``), so any JSON Schema validator checks a
report with nothing but that file:

    jsonschema.validate(report, json.load(open("report_schema/train_report.schema.json")))

``python -m visionbench.report validate FILE...`` checks reports of any
kind (read from the file's ``kind``), one line per file.

jsonschema is imported when a report is checked, not with this module: the
torch engine's GPU machines (issue 23: no jsonschema there) still read and
write record sets and reports; ``validate_report`` then checks nothing
(``can_validate()`` says which); the validate command needs it.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

# report_schema/ sits at the top of the source tree (a promise to users), so
# the package is installed in editable mode (Makefile, Dockerfile).
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "report_schema"
# a report's "kind" -> its schema
SCHEMA_OF_KIND = {"train": "train_report", "benchmark": "benchmark_report", "data_prep": "data_prep_report"}


def can_validate() -> bool:
    """Whether jsonschema can be imported here (reports are checked only then)."""
    try:
        import jsonschema  # noqa: F401
    except ImportError:
        return False
    return True


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict:
    import jsonschema

    path = SCHEMA_DIR / f"{name}.schema.json"
    schema = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validate_report(record: dict, name: str) -> None:
    """Raise jsonschema.ValidationError if ``record`` does not match schema
    ``name``; without jsonschema installed, check nothing."""
    if not can_validate():
        return
    import jsonschema

    jsonschema.Draft202012Validator(load_schema(name)).validate(record)
