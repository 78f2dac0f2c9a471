"""The one interface of every teacher, and the cache of what teachers predict.

A teacher labels texts: `logits(texts)` gives `[N, C]` log-probabilities (or logits) over the run's label space,
`label_names` in class-id order. It is named (`name`, for results and the card) and identified (`fingerprint`: what
its predictions depend on, the key of the cache below). The rest has defaults that a teacher overrides where it can:

- `default_temperature`: what divides its logits before the students learn from them, unless the config says;
- `embeddings(texts)`: sentence embeddings, for embedding distillation (SetFit, a classifier);
- `with_rows(labeled)`: the same teacher made from other labeled rows, for cross-fitting (SetFit, an LLM);
- `members`: the teachers it combines (an ensemble), itself otherwise;
- `train()`: train now what would train on first use (SetFit);
- `predictor()`: a function of texts that labels them as the teacher would, for timing it;
- `size()`: its layers and weights, where they can be read without loading it.

[`add_logits`] and [`add_embeddings`] compute a teacher's column for a dataset's `text` column once: an Arrow file in
the datasets cache, named by the rows' fingerprint, the teacher's and `max_length`, which a later run (or another
process) reads back instead of running the teacher.
"""

import logging
import os
from collections.abc import Callable, Sequence

import numpy as np
from datasets import Dataset
from datasets import config as datasets_config
from datasets.fingerprint import Hasher

logger = logging.getLogger(__name__)


class Teacher:
    """Base of every teacher ([`ClassifierTeacher`], [`SetFitTeacher`], [`LLMTeacher`], [`TeacherEnsemble`])."""

    kind = "custom"  # what it is, for the results: "fine_tune", "setfit", "llm", "ensemble", or a user's own
    default_temperature: float = 1.0
    # trained on the run's labeled rows, so its accuracy there is in-sample (SetFit; a classifier fine-tuned here)
    learns_labeled_rows: bool = False
    # every teacher sets these (as attributes or properties)
    name: str  # how results and the card name it
    label_names: list[str]  # its label space, in class-id order
    fingerprint: str  # what its predictions depend on: the key of its cached predictions

    def logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """`[N, C]`, column c for label id c."""
        raise NotImplementedError

    def embeddings(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """`[N, D]` sentence embeddings (embedding distillation)."""
        raise ValueError(
            f"The teacher {self.name} has no sentence embeddings; embedding distillation (lambda_embedding) takes a "
            "SetFit teacher or a classifier folder."
        )

    def with_rows(self, labeled: Dataset) -> "Teacher":
        """The same teacher made from other labeled rows (cross-fitting)."""
        raise ValueError(
            f"The teacher {self.name} cannot be cross-fitted (remade from folds of the labeled rows): only a SetFit or "
            "LLM teacher can."
        )

    @property
    def cross_fittable(self) -> bool:
        return type(self).with_rows is not Teacher.with_rows

    @property
    def has_embeddings(self) -> bool:
        return type(self).embeddings is not Teacher.embeddings

    def keep_embeddings(self) -> None:
        """The run will ask for embeddings of the texts it asks logits of: keep them if that saves work (SetFit)."""

    def calibration_report(self) -> dict | None:
        """What was measured on the labeled rows when the teacher was calibrated on them (an LLM), else `None`."""
        return None

    @property
    def members(self) -> list["Teacher"]:
        return [self]

    def train(self) -> None:
        """Train now what would otherwise train on first use (nothing, for most teachers)."""

    def predictor(self) -> Callable[[list[str]], np.ndarray]:
        return lambda texts: self.logits(list(texts))

    def size(self) -> dict:
        """`{"layers", "parameters"}` where they can be read without loading the teacher, else `None`s."""
        return {"layers": None, "parameters": None}

    def add_logits(self, dataset: Dataset, *, max_length: int = 64, batch_size: int = 64, cache_dir: str | None = None) -> Dataset:
        """`dataset` with a `teacher_logits` column (C floats per row) from its `text` column, cached."""
        return cached_column(dataset, self, "teacher_logits", self.logits, max_length=max_length, batch_size=batch_size,
                             cache_dir=cache_dir)  # fmt: skip

    def add_embeddings(self, dataset: Dataset, *, max_length: int = 64, batch_size: int = 64, cache_dir: str | None = None) -> Dataset:
        """`dataset` with a `teacher_embeddings` column (D floats per row) from its `text` column, cached."""
        if not self.has_embeddings:
            self.embeddings([])  # raises, naming the teacher
        return cached_column(dataset, self, "teacher_embeddings", self.embeddings, max_length=max_length,
                             batch_size=batch_size, cache_dir=cache_dir, key=["embeddings"])  # fmt: skip


def cached_column(dataset: Dataset, teacher: Teacher, column: str, compute, *, max_length: int, batch_size: int,
                  cache_dir: str | None, key: Sequence = ()) -> Dataset:  # fmt: skip
    """`dataset` with `column` computed by `compute(texts, batch_size=...)` from its `text` column, by batches of 1,024
    rows. The result is an Arrow file in the datasets cache named by the rows' fingerprint, the teacher's, `max_length`
    and `key`: a later run reads it back, and `compute` never runs."""
    fingerprint = Hasher.hash([dataset._fingerprint, teacher.fingerprint, max_length, *key])
    cache_dir = cache_dir or os.path.join(datasets_config.HF_DATASETS_CACHE, "nanonet_hf", "teacher_logits")
    os.makedirs(cache_dir, exist_ok=True)
    cache_file = os.path.join(cache_dir, f"{fingerprint}.arrow")
    if not os.path.exists(cache_file):  # a miss: the log says which process does the work
        logger.info("Computing %s of %d rows with %s", column.replace("_", " "), len(dataset), teacher.name)
        teacher.train()  # what trains on first use (SetFit) trains now, under its own progress bar, not the rows'
    return dataset.map(
        lambda batch: {column: np.asarray(compute(batch["text"], batch_size=batch_size)).tolist()},
        batched=True,
        batch_size=1024,
        cache_file_name=cache_file,
        new_fingerprint=fingerprint,
        desc=f"Teacher {column.removeprefix('teacher_')}",
    )
