"""The README's "Use it from Python" snippet runs (on the tiny model) and gives the recipe's student and card: the
library call and `recipes/train.py` are one pipeline."""

import json
import os
import re

import pytest
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from .conftest import ROOT, load_script

# what differs between two runs of the same pipeline: timings, the machine, where the folders are
VARYING = ("wall_time_s", "exported", "hardware")


def readme_snippet() -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Use it from Python") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_snippet_gives_the_recipes_student_and_card(tiny_model_dir, tmp_path):
    snippet = readme_snippet()
    assert len(snippet.strip().splitlines()) <= 12, "the README's Python example is meant to stay about 10 lines"
    model_id, out = "sentence-transformers/all-MiniLM-L6-v2", "runs/trec6"
    assert model_id in snippet and out in snippet
    snippet = snippet.replace(model_id, tiny_model_dir).replace(out, str(tmp_path / "snippet"))
    # a shorter run on both sides (the same change to the snippet's config and to the recipe's flags); the tiny
    # model has 3 layers, so its family is a 3-layer and a 2-layer student
    shorter = "max_steps=200, setfit_iterations=4, student_layers=[3, 2], speed_repeats=1"
    assert "eval_steps=100)" in snippet
    exec(compile(snippet.replace("eval_steps=100)", f"eval_steps=100, {shorter})"), "README.md", "exec"), {})

    recipe = load_script("recipes", "train.py")
    argv = ["--config", os.path.join(ROOT, "recipes", "configs", "trec6.yaml"), "--model_name_or_path", tiny_model_dir,
            "--output_dir", str(tmp_path / "recipe"), "--max_steps", "200", "--setfit_iterations", "4",
            "--student_layers", "3", "2", "--speed_repeats", "1"]  # fmt: skip
    recipe.main(*recipe.parse_args(argv))

    def results(run: str) -> dict:
        saved = json.loads((tmp_path / run / "results.json").read_text())
        for row in saved["family"]:  # the timings and the machine differ between two runs; the rest may not
            for key in [key for key in row if key.endswith("_ms") or key in ("texts_per_s", "measured_on")]:
                del row[key]
        return {key: value for key, value in saved.items() if key not in VARYING}

    assert results("snippet") == results("recipe")
    weights = [load_file(tmp_path / run / "student" / "model.safetensors") for run in ("snippet", "recipe")]
    assert weights[0].keys() == weights[1].keys()
    assert all((weights[0][key] == weights[1][key]).all() for key in weights[0])
    cards = [ModelCard.load(tmp_path / run / "student" / "README.md") for run in ("snippet", "recipe")]
    assert cards[0].data.to_dict() == cards[1].data.to_dict()
    assert cards[0].data.datasets == ["CogComp/trec"] and "## Accuracy and speed" in cards[0].text
    for run in ("snippet", "recipe"):  # the family: both students, each of its own depth
        assert sorted(os.listdir(tmp_path / run / "students")) == ["student_0", "student_1"]
