"""The shipped T5 vocabulary loads offline and gives the T5 v1.1 token ids."""

from modules.conditioning.t5_tokenizer import ASSET_DIR, EOS_ID, PAD_ID, load_t5_tokenizer


def test_t5_tokenizer_loads_offline_with_known_ids(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    tokenizer = load_t5_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [3, 9, 1202, 13, 3, 9, 1712, 1]
    assert len(tokenizer) == 32100
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (PAD_ID, EOS_ID)
    assert load_t5_tokenizer() is not tokenizer  # no module-level state


def test_t5_tokenizer_loads_through_transformers_directly():
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(ASSET_DIR, local_files_only=True)
    assert tokenizer("a photo of a cat").input_ids[-1] == EOS_ID
    notice = (ASSET_DIR / "NOTICE").read_text()
    assert "Apache License 2.0" in notice
