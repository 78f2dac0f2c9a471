import json
import os
import random
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    BertTokenizerFast,
    LlamaConfig,
    LlamaForCausalLM,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ["sport", "food", "tech"]
CLASS_WORDS = {
    "sport": ["goal", "match", "team", "score", "coach", "league"],
    "food": ["pasta", "bread", "salad", "spicy", "cook", "dinner"],
    "tech": ["laptop", "code", "chip", "server", "phone", "cloud"],
}
SHARED_WORDS = ["the", "a", "today", "was", "very", "new", "and", "we", "like", "this"]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """A 3-layer BERT with hidden size 16 and a word-level vocabulary of the toy data, saved as safetensors."""
    path = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *SHARED_WORDS, *sum(CLASS_WORDS.values(), [])]
    # transformers 5 takes the vocabulary itself (a `vocab_file=` keyword is silently ignored: the tokenizer would
    # hold the five special tokens only and map every word to [UNK])
    tokenizer = BertTokenizerFast(vocab={token: index for index, token in enumerate(vocab)}, do_lower_case=True)
    assert len(tokenizer) == len(vocab)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir, tmp_path_factory):
    """A 2-layer random Llama over the toy word vocabulary (the tiny BERT tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer("pasta goal")["input_ids"][1:3] != [tokenizer.unk_token_id] * 2, "the tiny vocabulary was lost"
    return tokenizer


def make_texts(n_per_class: int, seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for label, name in enumerate(LABELS):
        for _ in range(n_per_class):
            words = rng.sample(CLASS_WORDS[name], 2) + rng.sample(SHARED_WORDS, 3)
            rng.shuffle(words)
            texts.append(" ".join(words))
            labels.append(label)
    return texts, labels


@pytest.fixture
def toy_pool() -> Dataset:
    texts, labels = make_texts(20, seed=0)
    features = Features({"text": Value("string"), "label": ClassLabel(names=LABELS)})
    return Dataset.from_dict({"text": texts, "label": labels}, features=features)


def write_toy_files(folder) -> tuple[str, str]:
    """A labeled pool (12 texts per class) and a test file (5 per class) as .jsonl in `folder`, labels by name."""
    paths = []
    for name, count, seed in (("pool", 12, 1), ("test", 5, 2)):
        texts, labels = make_texts(count, seed=seed)
        paths.append(write_jsonl(folder / f"{name}.jsonl", [{"text": t, "label": LABELS[y]} for t, y in zip(texts, labels)]))
    return paths[0], paths[1]


def write_jsonl(path, rows: list[dict]) -> str:
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture
def datasets(toy_pool, tokenizer):
    """(train, eval): 4 labeled rows per class first, the rest unlabeled with random teacher logits; tokenized."""
    from nanonet_hf.data import sample_per_class, tokenize, training_dataset

    labeled, rest = sample_per_class(toy_pool, 4, seed=0)
    train = training_dataset(labeled, rest.remove_columns("label"))
    generator = torch.Generator().manual_seed(0)
    train = train.add_column("teacher_logits", (3 * torch.randn(len(train), 3, generator=generator)).tolist())
    evaluation = tokenize(rest.rename_column("label", "labels"), tokenizer, 16)
    return tokenize(train, tokenizer, 16), evaluation


def load_script(*path: str):
    """Import a script of the repository (not a package module), e.g. `load_script("benchmarks", "accuracy.py")`."""
    import importlib.util

    name = "nanonet_script_" + "_".join(path).removesuffix(".py")
    folder = os.path.join(ROOT, *path[:-1])
    if folder not in sys.path:  # as `python script.py` does: the script's folder is importable (benchmarks/common.py)
        sys.path.insert(0, folder)
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, *path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def tiny_run(tiny_model_dir, tmp_path_factory) -> str:
    """A finished `recipes/train.py` run on the tiny model: results.json, student/ with its card and learning curve,
    student_adapter/, student_base/."""
    recipe = load_script("recipes", "train.py")
    folder = tmp_path_factory.mktemp("run")
    pool, test = write_toy_files(folder)
    run = folder / "out"
    argv = [
        "--model_name_or_path", tiny_model_dir, "--labeled_file", pool, "--eval_file", test, "--labels_per_class", "4",
        "--num_students", "2", "--student_layers", "3", "2", "--max_steps", "4", "--per_device_train_batch_size", "8",
        "--eval_strategy", "steps", "--eval_steps", "2", "--teacher_num_train_epochs", "1", "--learning_rate", "0.01",
        "--max_length", "16", "--report_to", "none", "--output_dir", str(run), "--setfit_body", "null",
        "--speed_repeats", "2", "--allow_weak_teacher", "true",  # a random tiny model is no teacher
    ]  # fmt: skip
    recipe.main(*recipe.parse_args(argv))
    return str(run)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local Hub-compatible server (tests/hub_server.py); this process's Hub client may talk to it although
    HF_HUB_OFFLINE is set for everything else."""
    import huggingface_hub

    from .hub_server import HubServer

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with HubServer(str(tmp_path / "hub-storage")) as server:
        yield server
