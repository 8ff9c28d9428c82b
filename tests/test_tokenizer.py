"""The shipped CLIP vocabulary gives open_clip's / OpenAI's token ids, offline."""

from modules.conditioning.tokenizer import ASSET_DIR, BOS_ID, COMMA_ID, EOS_ID, ClipTokenizer


def test_known_ids():
    tokenizer = ClipTokenizer()
    assert tokenizer.encode_with_specials("a photo of an astronaut riding a horse") == [
        49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert tokenizer.encode_with_specials("  multiple   spaces\tand\nnewlines  ") == [
        49406, 6470, 9006, 537, 1218, 3418, 49407]
    mixed = ("A Photo of an ASTRONAUT, riding a horse!! (masterpiece:1.2) <lora:x:0.5> "
             "café naïve 日本")
    ids = tokenizer.encode_with_specials(mixed)
    assert len(ids) == 36 and ids[:7] == [49406, 320, 1125, 539, 550, 18376, COMMA_ID]
    assert (BOS_ID, EOS_ID) == (49406, 49407)


def test_encode_has_no_specials_and_vocabulary_is_complete():
    tokenizer = ClipTokenizer()
    assert tokenizer.encode("a, b") == [320, 267, 321]
    assert tokenizer.encode("") == []
    assert tokenizer.encode_batch(["a", "b"]) == [[320], [321]]
    assert len(tokenizer.hf_tokenizer) == 49408
    assert tokenizer.hf_tokenizer is tokenizer.hf_tokenizer  # built once per instance
    assert (ASSET_DIR / "NOTICE").is_file()
