"""What the benchmarks share: quiet model loading and the report (markdown table on stdout, optional JSON)."""

import json
import sys

from transformers.utils import logging as hf_logging


def quiet_transformers() -> None:
    """Keep load reports and progress bars out of the printed figures."""
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def report(result: dict, table: str, json_path: str | None) -> None:
    """Print `table`; write `result` with the command that produced it to `json_path` when given."""
    result["command"] = " ".join(["python", *sys.argv])
    print(table)
    if json_path:
        with open(json_path, "w") as handle:
            json.dump(result, handle, indent=2)
