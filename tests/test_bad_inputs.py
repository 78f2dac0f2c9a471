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

from .conftest import LABELS, load_script, make_texts, write_jsonl
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


# ---- the Python API and the recipe alike: overlap, class names, an old run, a useless teacher ----


def recipe_main(argv):
    recipe = load_recipe()
    return recipe.main(*recipe.parse_args(argv))


def as_dataset(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def test_overlap_warns_and_labeled_texts_leave_the_pool_in_python_and_on_the_cli(tmp_path, caplog):
    """Eval texts among the labeled rows warn (case and spacing ignored); labeled texts in the unlabeled pool are
    dropped from it with a log line; through the constructor and the recipe alike (both stop at the missing model)."""
    from nanonet_hf import MutualDistillationTrainer

    labeled = labeled_rows()
    evaluation = [dict(row) for row in labeled[:3]] + labeled_rows(2, seed=9)
    evaluation[0]["text"] = evaluation[0]["text"].upper() + " "
    pool = [{"text": row["text"]} for row in labeled[3:5]] + [{"text": f"unrelated text {i}"} for i in range(4)]
    missing = str(tmp_path / "missing-model")
    with caplog.at_level(logging.WARNING, logger="nanonet_hf.data"), pytest.raises(FileNotFoundError, match="no such folder"):
        MutualDistillationTrainer(model=missing, args=make_args(tmp_path), train_dataset=as_dataset(labeled),
                                  unlabeled_dataset=as_dataset(pool), eval_dataset=as_dataset(evaluation))  # fmt: skip
    assert "3 of the 9 eval_dataset texts also appear in the labeled rows" in caplog.text
    assert "Dropped 2 of the 6 unlabeled rows: their text is also a labeled row's" in caplog.text
    caplog.clear()
    files = [write_jsonl(tmp_path / f"{name}.jsonl", rows) for name, rows in
             (("labeled", labeled), ("pool", pool), ("eval", evaluation))]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="nanonet_hf.data"), pytest.raises(FileNotFoundError, match="no such folder"):
        recipe_main(["--model_name_or_path", missing, "--labeled_file", files[0], "--unlabeled_file", files[1],
                     "--eval_file", files[2], "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert "3 of the 9 eval_dataset texts also appear in the labeled rows" in caplog.text
    assert "Dropped 2 of the 6 unlabeled rows" in caplog.text
    assert not os.path.exists(tmp_path / "out")


def test_class_names_name_integer_labels_and_order_string_labels_in_python_and_on_the_cli(tiny_model_dir, tmp_path):
    from nanonet_hf import MutualDistillationTrainer

    ids = [{"text": row["text"], "label": LABELS.index(row["label"])} for row in labeled_rows()]
    for rows, names in ((ids, LABELS), (labeled_rows(), ["tech", "sport", "food"])):  # ids; names in an unsorted order
        args = make_args(tmp_path / names[0], class_names=names, lambda_kd=0.0)
        trainer = MutualDistillationTrainer(model=tiny_model_dir, args=args, train_dataset=as_dataset(rows))
        assert trainer.model.label_names == names and trainer.labeled.features["label"].names == names
        assert [names[i] for i in trainer.labeled["label"]] == [LABELS[row["label"]] if rows is ids else row["label"] for row in rows]
    path = write_jsonl(tmp_path / "ids.jsonl", ids)
    recipe = load_recipe()
    script, config = recipe.parse_args(["--labeled_file", path, "--class_names", *LABELS, "--output_dir", str(tmp_path / "cli")])
    assert config.class_names == LABELS
    data = prepare_data(labeled_file=path, class_names=config.class_names)
    assert data.label_names == LABELS and data.labeled["label"] == [row["label"] for row in ids]
    with pytest.raises(ValueError, match=r"ids.jsonl: unknown label\(s\) \[2\] in column 'label'; the label set is \['ham', 'spam'\]"):
        prepare_data(labeled_file=path, class_names=["ham", "spam"])
    with pytest.raises(ValueError, match=r"label_names=\['ham', 'spam'\] is Trainer's key of the labels in a batch.*class_names"):
        recipe.parse_args(["--labeled_file", path, "--label_names", "ham", "spam", "--output_dir", str(tmp_path / "cli")])
    with pytest.raises(ValueError, match=r"class_names=\['ham', 'ham'\] must name at least two classes, each once"):
        make_args(tmp_path, class_names=["ham", "ham"])
    assert not os.path.exists(tmp_path / "cli")


def load_recipe():
    return load_script("recipes", "train.py")


def test_an_output_dir_with_a_previous_export_is_refused_unless_overwritten_or_resumed(tmp_path):
    from nanonet_hf import MutualDistillationTrainer

    out = tmp_path / "out"
    (out / "student").mkdir(parents=True)
    (out / "results.json").write_text("{}")
    missing = str(tmp_path / "missing-model")
    refused = r"output_dir .*out holds a previous run's export \(results.json, student\); .*--overwrite_output_dir true"
    rows = as_dataset(labeled_rows())
    with pytest.raises(ValueError, match=refused):
        MutualDistillationTrainer(model=missing, args=make_args(tmp_path), train_dataset=rows)
    labeled = write_jsonl(tmp_path / "labeled.jsonl", labeled_rows())
    with pytest.raises(ValueError, match=refused):
        recipe_main(["--model_name_or_path", missing, "--labeled_file", labeled, "--eval_file", labeled, "--output_dir", str(out)])
    assert sorted(os.listdir(out)) == ["results.json", "student"] and (out / "results.json").read_text() == "{}"
    for allowed in ({"overwrite_output_dir": True}, {"resume_from_checkpoint": str(out / "checkpoint-2")}):
        with pytest.raises(FileNotFoundError, match="no such folder"):  # past the check, stopped at the model
            MutualDistillationTrainer(model=missing, args=make_args(tmp_path, **allowed), train_dataset=rows)


def always_first_class_teacher():
    """A teacher that answers the first class whatever the text: no better than the majority class."""
    import numpy as np

    from nanonet_hf import Teacher

    class AlwaysFirst(Teacher):
        name, fingerprint, label_names = "always-food", "always-food-v1", sorted(LABELS)

        def logits(self, texts, batch_size=64):
            return np.tile(np.log([0.8, 0.1, 0.1]), (len(texts), 1)).astype(np.float32)

    return AlwaysFirst()


def test_a_teacher_no_better_than_the_majority_class_is_refused_unless_allowed(tiny_model_dir, tmp_path, caplog):
    from nanonet_hf import MutualDistillationTrainer

    rows, pool = as_dataset(labeled_rows()), as_dataset([{"text": f"some text {i}"} for i in range(6)])
    refused = (r"The teacher always-food is right on 33.3% of the 18 labeled rows \(these rows\), no better than always "
               r"answering the majority class 'food' \(33.3%\) plus 5%.*--allow_weak_teacher true")  # fmt: skip
    with pytest.raises(ValueError, match=refused):
        MutualDistillationTrainer(model=tiny_model_dir, teacher_model=always_first_class_teacher(),
                                  args=make_args(tmp_path, allow_weak_teacher=False), train_dataset=rows,
                                  unlabeled_dataset=pool)  # fmt: skip
    assert not os.path.exists(tmp_path / "out")
    with caplog.at_level(logging.WARNING):
        trainer = MutualDistillationTrainer(model=tiny_model_dir, teacher_model=always_first_class_teacher(),
                                            args=make_args(tmp_path, allow_weak_teacher=True), train_dataset=rows,
                                            unlabeled_dataset=pool)  # fmt: skip
    assert "Teaching anyway (allow_weak_teacher)" in caplog.text
    assert trainer.teacher_check == {"teacher": "always-food", "accuracy": pytest.approx(1 / 3), "rows": 18,
                                     "how": "these rows", "majority": pytest.approx(1 / 3), "majority_class": "food",
                                     "members": [], "beats_majority": False}  # fmt: skip


def test_a_classifier_teacher_that_answers_one_class_is_refused_on_the_cli(tiny_model_dir, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=3, id2label=dict(enumerate(sorted(LABELS))),
        label2id={name: i for i, name in enumerate(sorted(LABELS))}, ignore_mismatched_sizes=True,
    )  # fmt: skip
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([50.0, 0.0, 0.0]))  # always 'food'
    model.save_pretrained(tmp_path / "teacher")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "teacher")
    pool, test = (write_jsonl(tmp_path / f"{name}.jsonl", labeled_rows(6, seed=seed)) for name, seed in (("pool", 1), ("test", 2)))
    argv = ["--model_name_or_path", tiny_model_dir, "--teacher_name_or_path", str(tmp_path / "teacher"), "--labeled_file",
            pool, "--labels_per_class", "4", "--eval_file", test, "--student_layers", "3", "2", "--output_dir", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(ValueError, match=r"The teacher .*teacher is right on 33.3% of the 12 labeled rows \(these rows\)"):
        recipe_main(argv)
    assert not os.path.exists(tmp_path / "out")


def test_evaluate_predict_and_student_logits_take_raw_rows(tiny_model_dir, tmp_path):
    import numpy as np
    from transformers import AutoModelForSequenceClassification as Auto

    from nanonet_hf import MutualDistillationTrainer

    args = make_args(tmp_path, num_students=2, max_steps=2, lambda_kd=0.0, speed_repeats=0, student_selection="ensemble")
    trainer = MutualDistillationTrainer(model=tiny_model_dir, args=args, train_dataset=as_dataset(labeled_rows()))
    trainer.train()
    test = labeled_rows(3, seed=4)
    metrics = trainer.evaluate(as_dataset(test))
    assert 0 <= metrics["eval_ensemble_accuracy"] <= 1 and "eval_student_1_accuracy" in metrics
    texts = as_dataset([{"text": row["text"]} for row in test])
    output = trainer.predict(texts)
    assert output.predictions.shape == (9, 2, 3) and output.label_ids is None
    chosen = trainer.student_logits(texts)  # the exported student's, chosen now
    np.testing.assert_allclose(chosen, output.predictions[:, trainer.chosen_student], atol=1e-6)
    trainer.save_model()
    student = Auto.from_pretrained(os.path.join(args.output_dir, "student"))
    inputs = trainer.processing_class([row["text"] for row in test], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        np.testing.assert_allclose(student(**inputs).logits.numpy(), chosen, atol=1e-5)
    with pytest.raises(ValueError, match=r"test_dataset: unknown label\(s\) \['weather'\]"):
        trainer.predict(as_dataset([{"text": "rain", "label": "weather"}]))
    with pytest.raises(ValueError, match=r"student=5: this cohort has students 0 to 1"):
        trainer.student_logits(texts, student=5)
