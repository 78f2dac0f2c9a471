"""Every kind of bad input meets an error that names the problem, raised before any work, with nothing written."""

import logging
import os

import pytest
import torch
from peft import IA3Config
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from nanonet_hf import MutualDistillationConfig, StudentCohort
from nanonet_hf.base_model import load_base
from nanonet_hf.data import prepare_data
from nanonet_hf.teachers import check_teacher

from .conftest import LABELS, make_texts, write_jsonl
from .test_trainer import make_args, make_trainer

ID2LABEL = dict(enumerate(LABELS))


def labeled_rows(n_per_class=6, seed=0):
    texts, labels = make_texts(n_per_class, seed=seed)
    return [{"text": text, "label": LABELS[label]} for text, label in zip(texts, labels, strict=True)]


def prepare(tmp_path, rows, *, eval_rows=None, **kwargs):
    labeled = write_jsonl(tmp_path / "labeled.jsonl", rows)
    eval_file = write_jsonl(tmp_path / "eval.jsonl", eval_rows) if eval_rows is not None else None
    return prepare_data(labeled_file=labeled, eval_file=eval_file, **kwargs)


# ---- data ----


def test_empty_labeled_file(tmp_path):
    (tmp_path / "labeled.jsonl").write_text("")
    with pytest.raises(ValueError, match=r"labeled.jsonl is empty"):
        prepare_data(labeled_file=str(tmp_path / "labeled.jsonl"))


def test_malformed_file_is_named(tmp_path):
    (tmp_path / "labeled.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", "label": \n')
    with pytest.raises(ValueError, match=r"Cannot parse .*labeled.jsonl as jsonl"):
        prepare_data(labeled_file=str(tmp_path / "labeled.jsonl"))


def test_only_one_class(tmp_path):
    rows = [row for row in labeled_rows() if row["label"] == "food"]
    with pytest.raises(ValueError, match=r"single class \('food'\)"):
        prepare(tmp_path, rows)


def test_label_outside_the_label_set(tmp_path):
    eval_rows = labeled_rows(2, seed=3)
    eval_rows[1]["label"] = "weather"
    with pytest.raises(ValueError, match=r"eval.jsonl: unknown label\(s\) \['weather'\].*\['food', 'sport', 'tech'\]"):
        prepare(tmp_path, labeled_rows(), eval_rows=eval_rows)


def test_budget_larger_than_a_class_has(tmp_path):
    rows = labeled_rows()[:-2]  # 'tech' keeps 4 rows
    with pytest.raises(ValueError, match=r"labels_per_class=5 is more than some classes have: 'tech' has 4"):
        prepare(tmp_path, rows, labels_per_class=5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text_column": "sentence"}, r"no column 'sentence' \(set text_column\); its columns are \['text', 'label'\]"),
        ({"label_column": "lable"}, r"no column 'lable' \(set label_column\)"),
    ],
)
def test_missing_or_misspelled_column(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare(tmp_path, labeled_rows(), **kwargs)


def test_non_string_and_empty_texts_are_counted_and_located(tmp_path):
    rows = labeled_rows()
    rows[3]["text"], rows[7]["text"], rows[8]["text"] = 42, "   ", None
    with pytest.raises(ValueError, match=r"3 rows have an empty or non-string text \(rows \[3, 7, 8\]"):
        prepare(tmp_path, rows)


def test_texts_shared_by_labeled_and_eval_rows_are_counted_in_a_warning(tmp_path, caplog):
    rows = labeled_rows()
    eval_rows = [dict(row) for row in rows[:3]] + labeled_rows(2, seed=9)
    eval_rows[0]["text"] = eval_rows[0]["text"].upper() + " "  # same text, other case and spacing
    with caplog.at_level(logging.WARNING, logger="nanonet_hf.data"):
        prepare(tmp_path, rows, eval_rows=eval_rows, labels_per_class=2)
    messages = [record.getMessage() for record in caplog.records]
    overlap = [message for message in messages if "also appear in the" in message]
    assert overlap, messages
    labeled_count = sum(int(m.split(" of the ")[0]) for m in overlap)  # split between labeled and unlabeled rows
    assert labeled_count == 3
    assert all(f"of the {len(eval_rows)} evaluation texts" in message for message in overlap)


# ---- models ----


def test_teacher_with_another_label_space(tiny_model_dir, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    model.save_pretrained(tmp_path / "teacher")
    with pytest.raises(ValueError, match=r"predicts labels \['LABEL_0', 'LABEL_1'\], but the data's labels are"):
        check_teacher(str(tmp_path / "teacher"), LABELS)


def test_teacher_whose_tokenizer_belongs_to_another_model(tiny_model_dir, tmp_path):
    config = BertConfig(
        vocab_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        id2label=ID2LABEL, label2id={name: index for index, name in ID2LABEL.items()},
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(tmp_path / "teacher")  # embeds 10 ids
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "teacher")  # makes ids up to 36
    with pytest.raises(ValueError, match=r"tokenizer has \d+ tokens but its model embeds only 10"):
        check_teacher(str(tmp_path / "teacher"), LABELS)


def test_teacher_without_tokenizer(tiny_model_dir, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=3, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()}, ignore_mismatched_sizes=True
    )
    model.save_pretrained(tmp_path / "teacher")
    # transformers would build an empty BERT tokenizer (special tokens only) from the config alone
    with pytest.raises(ValueError, match="has no tokenizer files"):
        check_teacher(str(tmp_path / "teacher"), LABELS)


def test_unsupported_adapter_type(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="only LoRA honours"):
        StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, lora_config=IA3Config(target_modules=["query"], feedforward_modules=[]))
    with pytest.raises(ValueError, match=r"adapter_type='ia3' cannot train a cohort in one forward"):
        MutualDistillationConfig(output_dir=str(tmp_path), adapter_type="ia3")


def test_unknown_student_selection_rule(tmp_path):
    with pytest.raises(ValueError, match=r"student_selection must be one of \('teacher', 'ensemble'\), got 'best'"):
        MutualDistillationConfig(output_dir=str(tmp_path), student_selection="best")


@pytest.mark.parametrize("value", [0, -2])
def test_num_students_below_one(tiny_model_dir, tmp_path, value):
    with pytest.raises(ValueError, match=f"num_students must be at least 1, got {value}"):
        MutualDistillationConfig(output_dir=str(tmp_path), num_students=value)
    with pytest.raises(ValueError, match=f"num_students must be at least 1, got {value}"):
        StudentCohort.from_pretrained(tiny_model_dir, id2label=ID2LABEL, num_students=value)


def test_model_folder_with_only_pickle_weights_is_refused(tiny_model_dir, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    folder = tmp_path / "pickled"
    folder.mkdir()
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=r"holds no .safetensors weights; nanonet_hf loads safetensors only"):
        load_base(str(folder), id2label=ID2LABEL)


# ---- checkpoints ----


def save_one_checkpoint(tiny_model_dir, tokenizer, datasets, tmp_path):
    args = make_args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    make_trainer(tiny_model_dir, tokenizer, args, datasets[0]).train()
    return os.path.join(args.output_dir, "checkpoint-2")


def resume(tiny_model_dir, tokenizer, datasets, tmp_path, checkpoint):
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    make_trainer(tiny_model_dir, tokenizer, args, datasets[0]).train(resume_from_checkpoint=checkpoint)


def test_truncated_checkpoint_is_named(tiny_model_dir, tokenizer, datasets, tmp_path):
    checkpoint = save_one_checkpoint(tiny_model_dir, tokenizer, datasets, tmp_path)
    weights = os.path.join(checkpoint, "model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"checkpoint-2/model.safetensors cannot be read \(truncated or corrupt\?\)"):
        resume(tiny_model_dir, tokenizer, datasets, tmp_path, checkpoint)


def test_unreadable_checkpoint_is_named(tiny_model_dir, tokenizer, datasets, tmp_path):
    checkpoint = save_one_checkpoint(tiny_model_dir, tokenizer, datasets, tmp_path)
    save_file({"something.else": torch.zeros(2)}, os.path.join(checkpoint, "model.safetensors"))
    with pytest.raises(ValueError, match=r"does not match this cohort \(3 students\): missing"):
        resume(tiny_model_dir, tokenizer, datasets, tmp_path, checkpoint)


def test_checkpoint_cut_short_by_a_kill_is_refused_by_path_and_skipped_by_resume_true(
    tiny_model_dir, tokenizer, datasets, tmp_path, caplog
):
    checkpoint = save_one_checkpoint(tiny_model_dir, tokenizer, datasets, tmp_path)
    os.remove(os.path.join(checkpoint, "trainer_state.json"))  # what a kill during the save leaves
    with pytest.raises(ValueError, match=r"checkpoint-2 is incomplete \(trainer_state.json, written last, is missing\)"):
        resume(tiny_model_dir, tokenizer, datasets, tmp_path, checkpoint)
    with pytest.raises(ValueError, match="holds no complete checkpoint"):
        resume(tiny_model_dir, tokenizer, datasets, tmp_path, True)
    assert "Skipping the incomplete checkpoint" in caplog.text


# ---- labels, read the same way from files (the recipe) and from Datasets (the Python API) ----

LABEL_CASES = {  # case: (a CSV or JSON lines file's text, the same labels as a Python list, the message)
    "missing": ("text,label\nthe pasta was spicy,0\nwhat a goal,\nnew laptop chip,1\n", [0, None, 1],
                r"1 rows have no 'label' value \(empty or NaN; rows \[1\]"),
    "nan": ("text,label\nthe pasta was spicy,0\nwhat a goal,nan\nnew laptop chip,1\n", [0.0, float("nan"), 1.0], r"1 rows have no 'label' value \(empty or NaN; rows \[1\]"),
    "ids mixed with names": ("text,label\nthe pasta was spicy,0\nwhat a goal,ham\nnew laptop chip,1\nmatch,spam\n",
                             ["0", "ham", "1", "spam"], r"mixes class ids \(\['0', '1'\].*with class names \(\['ham', 'spam'\]"),
    "multi-label": ('{"text": "the pasta was spicy", "label": 0}\n{"text": "what a goal", "label": [0, 1]}\n',
                    [[0], [0, 1]], r"multi-label classification is not supported"),
    "fraction": ("text,label\nthe pasta was spicy,0\nwhat a goal,0.5\nnew laptop chip,1\n", [0.0, 0.5, 1.0], r"numbers that are not class ids \(rows \[1\]"),
}


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_bad_labels_are_refused_naming_the_file_and_rows(case, tmp_path):
    text, _, message = LABEL_CASES[case]
    path = tmp_path / ("labeled.jsonl" if text.startswith("{") else "labeled.csv")
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"{path.name}: .*{message}"):
        prepare_data(labeled_file=str(path))
    assert sorted(os.listdir(tmp_path)) == [path.name]  # nothing written


@pytest.mark.parametrize("case", sorted(LABEL_CASES))
def test_bad_labels_are_refused_in_python_before_any_model_loads(case, tmp_path):
    from datasets import Dataset

    from nanonet_hf import MutualDistillationTrainer

    _, values, message = LABEL_CASES[case]
    rows = Dataset.from_dict({"text": [f"text {i}" for i in range(len(values))], "label": values})
    with pytest.raises(ValueError, match=rf"train_dataset: .*{message}"):
        MutualDistillationTrainer(model="no/such-model", args=make_args(tmp_path), train_dataset=rows)
    assert not os.path.exists(tmp_path / "out")


def test_a_single_class_is_refused_as_such_in_python_without_an_eval_set(tmp_path):
    from datasets import Dataset

    from nanonet_hf import MutualDistillationTrainer

    rows = Dataset.from_dict({"text": ["the pasta", "the bread", "the soup"], "label": ["food"] * 3})
    with pytest.raises(ValueError, match=r"train_dataset: the labeled set has a single class \('food'\)"):
        MutualDistillationTrainer(model="no/such-model", args=make_args(tmp_path), train_dataset=rows)


@pytest.mark.parametrize(
    "option, value, message",
    [("learning_rate", -1e-3, r"learning_rate must be > 0, got -0.001"),
     ("max_steps", 0, r"max_steps must be > 0, or -1 .* got 0"),
     ("lora_r", 0, r"lora_r must be at least 1 .* lora_r=0")],
)  # fmt: skip
def test_training_options_are_checked_when_the_config_is_made(option, value, message, tmp_path):
    """Trainer itself would fail inside train() (a negative learning rate), after the teacher was built, or train one
    step and export (max_steps 0); PEFT would fail without naming the option (lora_r 0)."""
    with pytest.raises(ValueError, match=message):
        MutualDistillationConfig(output_dir=str(tmp_path / "out"), **{option: value})
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("option", ["teacher_model", "model"])
def test_a_folder_that_does_not_exist_is_named_as_such(option, tiny_model_dir, tmp_path):
    """Not the Hub client's "Repo id must be in the form 'repo_name'" about a local path with a typo."""
    from datasets import Dataset

    from nanonet_hf import MutualDistillationTrainer

    rows = Dataset.from_dict({"text": ["the pasta", "a goal", "the bread", "the match"], "label": ["food", "sport"] * 2})
    missing = str(tmp_path / "runs" / "teacher-typo")
    given = {"model": tiny_model_dir, "teacher_model": missing} if option == "teacher_model" else {"model": missing}
    with pytest.raises(FileNotFoundError, match=rf"{option} .*'{missing}': no such folder"):
        MutualDistillationTrainer(args=make_args(tmp_path), train_dataset=rows, **given)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("name", ["labeled.csv", "labeled.jsonl"])
def test_a_byte_that_is_not_utf8_is_named_with_its_file_and_line(name, tmp_path):
    rows = b'text,label\nhello,0\nbad \xff byte,1\n' if name.endswith(".csv") else b'{"text": "hello", "label": 0}\n{"text": "bad \xff", "label": 1}\n'
    (tmp_path / name).write_bytes(rows)
    line, column = (3, 5) if name.endswith(".csv") else (2, 15)  # the file's own lines, the CSV header counted
    with pytest.raises(ValueError, match=rf"{name}: line {line} is not UTF-8 \(byte 0xff at column {column}\)"):
        prepare_data(labeled_file=str(tmp_path / name))
