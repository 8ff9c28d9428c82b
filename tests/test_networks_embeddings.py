"""Textual-inversion files of every layout are read and fitted to a model's encoders."""

from __future__ import annotations

import torch
from safetensors.torch import save_file

from modules.models.hashes import HashCache
from modules.networks.embeddings import EmbeddingLibrary, fit, read_embedding, used_embeddings

SD1 = {"clip_l": 768}
SDXL = {"clip_l": 768, "clip_g": 1280}


def test_layouts(tmp_path):
    torch.save({"string_to_param": {"*": torch.randn(2, 768)}, "name": "x", "step": 3,
                "sd_checkpoint": "abcd", "sd_checkpoint_name": "m"}, tmp_path / "a1111.pt")
    torch.save({"<cat-toy>": torch.randn(768)}, tmp_path / "concept.bin")
    save_file({"emb_params": torch.randn(4, 1024)}, str(tmp_path / "kohya.safetensors"))
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)},
              str(tmp_path / "xl.safetensors"))
    a = read_embedding(tmp_path / "a1111.pt")
    assert (a.name, a.step, a.sd_checkpoint, a.count, a.shape) == ("a1111", 3, "abcd", 2, 768)
    assert read_embedding(tmp_path / "concept.bin").count == 1
    assert read_embedding(tmp_path / "kohya.safetensors").shape == 1024
    xl = read_embedding(tmp_path / "xl.safetensors")
    assert xl.shape == 2048
    assert set(fit(xl, SDXL)) == {"clip_l", "clip_g"}
    assert "does not fit" in fit(xl, SD1)
    assert "expects 1024" in fit(a, {"clip_h": 1024})
    assert set(fit(a, SD1)) == {"clip_l"}


def test_library_skips_with_reasons_and_finds_used_names(tmp_path):
    torch.save({"string_to_param": {"*": torch.randn(2, 8)}}, tmp_path / "good.pt")
    torch.save({"string_to_param": {"*": torch.randn(2, 9)}}, tmp_path / "wide.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle")
    library = EmbeddingLibrary(folder=tmp_path, hash_cache=HashCache(path=None))
    tokenize = lambda text: [hash(w) % 1000 + 1 for w in text.split()]  # noqa: E731
    found = library.for_model({"clip_l": 8}, tokenize)
    assert set(found.loaded) == {"good"}
    assert "does not fit" in found.skipped["wide"][1]
    assert found.skipped["junk"][0] is None
    assert library.for_model({"clip_l": 8}, tokenize) is found  # cached while unchanged
    assert used_embeddings(found.table, tokenize, ["a good cat", "good"], "clip_l") == ["good"]
    assert used_embeddings(found.table, tokenize, ["a cat"], "clip_l") == []
