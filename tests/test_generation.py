"""LM-generated unlabeled text, with a tiny random causal LM: dedup, caching, cleaning, bad input."""

import os

import pytest

from nanonet_hf.generation import clean_generation, generate_unlabeled, normalize


def test_generates_deduplicated_texts_and_reads_them_back_from_the_cache(toy_pool, tiny_lm, tmp_path, monkeypatch):
    labeled = toy_pool.select(range(0, 60, 6))
    pool = toy_pool["text"]
    first = generate_unlabeled(labeled, tiny_lm, num_texts=6, max_new_tokens=6, batch_size=4, exclude=pool, cache_dir=str(tmp_path / "a"))
    texts = first["text"]
    assert 1 <= len(texts) <= 6
    keys = [normalize(text) for text in texts]
    assert len(set(keys)) == len(keys)
    assert not set(keys) & {normalize(text) for text in [*pool, *labeled["text"]]}
    assert len(os.listdir(tmp_path / "a")) == 1 and not [n for n in os.listdir(tmp_path / "a") if n.endswith(".tmp")]

    # same settings: read from the cache, the model is never loaded
    def refuse(*args, **kwargs):
        raise AssertionError("the generator was loaded although the cache holds the texts")

    with monkeypatch.context() as patch:
        patch.setattr("nanonet_hf.generation.AutoModelForCausalLM.from_pretrained", refuse)
        again = generate_unlabeled(labeled, tiny_lm, num_texts=6, max_new_tokens=6, batch_size=4, exclude=pool, cache_dir=str(tmp_path / "a"))
        assert again["text"] == texts
        with pytest.raises(AssertionError, match="never|was loaded"):  # another seed is another key
            generate_unlabeled(labeled, tiny_lm, num_texts=6, max_new_tokens=6, batch_size=4, seed=1, exclude=pool, cache_dir=str(tmp_path / "a"))

    # the same sampling with two of those texts excluded: they are dropped, not repeated
    excluded = generate_unlabeled(
        labeled, tiny_lm, num_texts=6, max_new_tokens=6, batch_size=4, exclude=[*pool, *texts[:2]], cache_dir=str(tmp_path / "b")
    )["text"]
    assert not {normalize(text) for text in texts[:2]} & {normalize(text) for text in excluded}


def test_clean_generation_keeps_the_first_line_without_markers():
    assert clean_generation("  - What is the capital of Peru ?\nnext") == "What is the capital of Peru ?"
    assert clean_generation('1. "Who wrote Hamlet?"') == "Who wrote Hamlet?"
    assert clean_generation("\n\n* a b c d") == "a b c d"
    assert clean_generation("too short") is None
    assert clean_generation("") is None


def test_bad_input_is_refused_before_loading(toy_pool, tmp_path):
    with pytest.raises(ValueError, match="num_texts"):
        generate_unlabeled(toy_pool, "no/such-model", num_texts=0, cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="labeled set is empty"):
        generate_unlabeled(toy_pool.select([]), "no/such-model", num_texts=3, cache_dir=str(tmp_path))
