"""Jinja templates of the cards nanonet_hf writes (installed as `nanonet_hf.model_cards`)."""
