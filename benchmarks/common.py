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


def query_value_lora(model_path: str):
    """The adapters the speed figures are measured with: LoRA r=8 on the attention's query and value projections (the
    library's default targets are every linear layer of the encoder; these keep the README's figures comparable)."""
    from peft import LoraConfig
    from transformers import AutoConfig

    model_type = AutoConfig.from_pretrained(model_path).model_type
    targets = {"mpnet": ["q", "v"], "distilbert": ["q_lin", "v_lin"], "deberta-v2": ["query_proj", "value_proj"],
               "modernbert": ["Wqkv"]}.get(model_type, ["query", "value"])  # fmt: skip
    return LoraConfig(r=8, lora_alpha=16, target_modules=targets)
