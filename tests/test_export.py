import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from peft import AutoPeftModelForSequenceClassification, LoraConfig

from nanonet_hf import StudentCohort, export_student
from nanonet_hf.inference import predict_logits

from .conftest import LABELS, make_texts

ID2LABEL = dict(enumerate(LABELS))


@pytest.fixture(params=[None, 1], ids=["adapters-everywhere", "shared-trunk"])
def cohort(tiny_model_dir, request):
    # random LoRA A and B: the merged weights differ from the base, so a wrong merge shows in the predictions
    return StudentCohort.from_pretrained(
        tiny_model_dir,
        id2label=ID2LABEL,
        num_students=3,
        student_layers="0,2",
        adapter_layers=request.param,
        lora_config=LoraConfig(r=4, lora_alpha=8, init_lora_weights=False),
    )


LOAD_WITHOUT_PEFT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    folder, texts = sys.argv[1], json.loads(sys.argv[2])
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    assert "peft" not in sys.modules, "loading the exported student imported peft"
    print(json.dumps({"logits": logits.tolist(), "id2label": model.config.id2label, "layers": model.config.num_hidden_layers}))
    """
)


def test_export_round_trip_in_a_process_without_peft(cohort, tokenizer, tmp_path):
    texts, _ = make_texts(3, seed=5)
    expected = predict_logits(cohort, tokenizer, texts)[:, 1]  # [N, C] of student 1
    exported = export_student(cohort, 1, str(tmp_path / "run"), tokenizer)
    assert sorted(os.listdir(tmp_path / "run")) == ["student", "student_adapter", "student_base"]

    result = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PEFT, exported.student_dir, json.dumps(texts)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(np.array(loaded["logits"]), expected, atol=1e-5)
    assert loaded["id2label"] == {str(k): v for k, v in ID2LABEL.items()}
    assert loaded["layers"] == 2
    # the students differ, so matching student 1 means the merge took student 1's adapter and head
    others = predict_logits(cohort, tokenizer, texts)
    assert not np.allclose(others[:, 0], expected, atol=1e-3)


def test_adapter_folder_loads_with_auto_peft_model(cohort, tokenizer, tmp_path):
    texts, _ = make_texts(2, seed=6)
    expected = predict_logits(cohort, tokenizer, texts)[:, 2]
    exported = export_student(cohort, "student_2", str(tmp_path / "run"), tokenizer)
    model = AutoPeftModelForSequenceClassification.from_pretrained(exported.adapter_dir)
    np.testing.assert_allclose(predict_logits(model, tokenizer, texts), expected, atol=1e-5)


def test_export_replaces_a_previous_export_and_leaves_no_temporary_folder(cohort, tokenizer, tmp_path):
    run = tmp_path / "run"
    export_student(cohort, 0, str(run), tokenizer)
    first = (run / "student" / "model.safetensors").read_bytes()
    export_student(cohort, 1, str(run), tokenizer)
    assert (run / "student" / "model.safetensors").read_bytes() != first
    assert sorted(os.listdir(run)) == ["student", "student_adapter", "student_base"]


def test_export_of_an_unknown_student_fails_before_writing(cohort, tokenizer, tmp_path):
    with pytest.raises(ValueError, match="Unknown student 'student_7'"):
        export_student(cohort, 7, str(tmp_path / "run"), tokenizer)
    assert not (tmp_path / "run").exists()


def test_a_failing_export_leaves_nothing_half_written(cohort, tokenizer, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.nn.Module, "state_dict", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_student(cohort, 0, str(tmp_path / "run"), tokenizer)
    assert os.listdir(tmp_path / "run") == []
