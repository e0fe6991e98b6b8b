"""python -m visionbench.report validate FILE...: check reports of any kind.

One line per file: ``FILE: valid KIND report`` or what is wrong and where.
Exit status 0 when every file is a valid report, 1 when one does not match
its schema, 2 when one cannot be read as a report (missing, not JSON, no
known ``kind``) or the command is misused.
"""
from __future__ import annotations

import json
import sys
from typing import Optional, Sequence

from ..cli import ArgumentParser, run_main


def check_file(path: str) -> tuple:
    """(exit status, line) for one file."""
    import jsonschema

    from .schema import SCHEMA_OF_KIND, validate_report

    try:
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
    except OSError as err:
        return 2, f"{path}: cannot be read ({err.strerror})"
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return 2, f"{path}: not JSON ({err})"
    kind = report.get("kind") if isinstance(report, dict) else None
    if kind not in SCHEMA_OF_KIND:
        return 2, f"{path}: not a visionbench report (kind {kind!r}; expected one of {', '.join(SCHEMA_OF_KIND)})"
    try:
        validate_report(report, SCHEMA_OF_KIND[kind])
    except jsonschema.ValidationError as err:
        where = "/".join(str(part) for part in err.absolute_path) or "(top level)"
        return 1, f"{path}: invalid {kind} report at {where}: {err.message[:300]}"
    return 0, f"{path}: valid {kind} report"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = ArgumentParser(prog="python -m visionbench.report",
                            description="Validate visionbench reports (train, benchmark, data_prep).")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="validate report files against report_schema/")
    validate.add_argument("files", nargs="+", metavar="FILE")
    args = parser.parse_args(argv)
    worst = 0
    for path in args.files:
        status, line = check_file(path)
        print(line, flush=True)
        worst = max(worst, status)
    return worst


if __name__ == "__main__":
    sys.exit(run_main(main, "python -m visionbench.report"))
