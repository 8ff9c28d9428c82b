"""A1111 hashes, the hash cache, checkpoint listing and lookup order."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from modules.models.checkpoints import CheckpointInfo, find_checkpoint, list_checkpoints
from modules.models.hashes import (
    HashCache,
    addnet_hash,
    legacy_model_hash,
    sha256_file,
    short_hash,
)


def test_sha256_known_value(tmp_path: Path) -> None:
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    full = sha256_file(path)
    assert full == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert short_hash(full) == "ba7816bf8f"
    big = tmp_path / "big.bin"
    data = os.urandom(3 * (1 << 20) + 123)  # crosses several 1 MiB blocks
    big.write_bytes(data)
    assert sha256_file(big) == hashlib.sha256(data).hexdigest()


def test_legacy_hash_offsets(tmp_path: Path) -> None:
    data = bytearray(os.urandom(0x100000 + 0x10000 + 500))
    path = tmp_path / "m.ckpt"
    path.write_bytes(bytes(data))
    expected = hashlib.sha256(bytes(data[0x100000:0x110000])).hexdigest()[:8]
    assert legacy_model_hash(path) == expected
    data[0] ^= 0xFF  # bytes outside the window do not matter
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert legacy_model_hash(path) == expected
    assert legacy_model_hash(tmp_path / "missing.ckpt") == "NOFILE"


def test_addnet_hash_skips_header(tmp_path: Path) -> None:
    tensors = {"lora_unet_x.lora_down.weight": torch.arange(8.0).reshape(2, 4)}
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(tensors, str(first), metadata={"ss_output_name": "a"})
    save_file(tensors, str(second), metadata={"ss_output_name": "a much longer name"})
    raw = first.read_bytes()
    data = raw[8 + int.from_bytes(raw[:8], "little"):]
    assert addnet_hash(first) == hashlib.sha256(data).hexdigest() == addnet_hash(second)
    assert sha256_file(first) != sha256_file(second)
    declared = tmp_path / "c.safetensors"
    save_file(tensors, str(declared), metadata={"sshs_model_hash": "f" * 64})
    assert addnet_hash(declared) == "f" * 64
    pickled = tmp_path / "d.pt"
    torch.save(tensors, pickled)
    assert addnet_hash(pickled) == sha256_file(pickled)


def test_cache_reuse_and_invalidation(tmp_path: Path) -> None:
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"one")
    cache_file = tmp_path / "cache" / "hashes.json"
    calls: list[str] = []

    def counting(path: str) -> str:
        calls.append(path)
        return sha256_file(path)

    cache = HashCache(path=cache_file)
    assert cache.get(model, "sha256", counting) == hashlib.sha256(b"one").hexdigest()
    assert cache.get(model, "sha256", counting) == hashlib.sha256(b"one").hexdigest()
    assert len(calls) == 1
    stored = json.loads(cache_file.read_text())
    assert stored["sha256"][str(model.resolve())]["value"] == hashlib.sha256(b"one").hexdigest()
    assert not [p for p in cache_file.parent.iterdir() if p.name.endswith(".tmp")]

    reopened = HashCache(path=cache_file)  # persisted: a new process does not re-hash
    assert reopened.get(model, "sha256", counting) == hashlib.sha256(b"one").hexdigest()
    assert len(calls) == 1

    stat = model.stat()
    model.write_bytes(b"two")  # same size, new content and mtime
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert reopened.cached(model, "sha256") is None
    assert reopened.get(model, "sha256", counting) == hashlib.sha256(b"two").hexdigest()
    assert len(calls) == 2


def make_models(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    for name in ["model10.safetensors", "model2.ckpt", "sub/Anime.safetensors",
                 "sd15.vae.safetensors", "notes.txt"]:
        (root / name).write_bytes(name.encode() * 10)
    (root / "pipe" / "unet").mkdir(parents=True)
    (root / "pipe" / "model_index.json").write_text("{}")
    (root / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"unet")


def test_listing(tmp_path: Path) -> None:
    make_models(tmp_path)
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    found = list_checkpoints([tmp_path])
    assert [info.name for info in found] == ["model2.ckpt", "model10.safetensors", "pipe",
                                             "sub/Anime.safetensors"]
    anime = found[3]
    assert (anime.model_name, anime.stem, anime.title) == (
        "sub_Anime", "Anime", "sub/Anime.safetensors")
    assert anime.legacy_hash == legacy_model_hash(tmp_path / "sub" / "Anime.safetensors")
    hashed = anime.hashed()
    assert hashed.sha256 == sha256_file(tmp_path / "sub" / "Anime.safetensors")
    assert hashed.title == f"sub/Anime.safetensors [{hashed.sha256[:10]}]"
    assert found[2].hashed().sha256 == hashlib.sha256(b"unet").hexdigest()

    cache = HashCache(path=tmp_path / "cache.json")
    cache.sha256(tmp_path / "model2.ckpt")
    relisted = list_checkpoints([tmp_path], cache=cache)
    assert relisted[0].sha256 == sha256_file(tmp_path / "model2.ckpt")
    assert relisted[1].sha256 is None  # listing never hashes, it only reads the cache


def info(name: str, sha: str | None = None, legacy: str = "00000000") -> CheckpointInfo:
    return CheckpointInfo(path=f"/models/{name}", name=name, legacy_hash=legacy, sha256=sha)


def test_lookup_order() -> None:
    sha_a = "a" * 10 + "1" * 54
    a = info("realistic/photo.safetensors", sha=sha_a, legacy="1234abcd")
    b = info("photo_v2.safetensors", legacy="deadbeef")
    c = info("photos.ckpt")
    checkpoints = [a, b, c]
    assert find_checkpoint("1234abcd", checkpoints) is a  # legacy hash
    assert find_checkpoint("realistic_photo", checkpoints) is a  # model_name
    assert find_checkpoint(a.title, checkpoints) is a
    assert find_checkpoint("photos.ckpt", checkpoints) is c  # relative name
    assert find_checkpoint("photo_v2", checkpoints) is b  # stem
    assert find_checkpoint("photo_v2.safetensors [deadbeef]", checkpoints) is b
    assert find_checkpoint("aaaaaaaaaa", checkpoints) is a  # short sha256
    assert find_checkpoint(sha_a, checkpoints) is a
    assert find_checkpoint("photo [aaaaaaaaaa]", checkpoints) is a  # stem [short]
    # an exact alias (a's stem) beats the shorter title "photos.ckpt" containing it
    assert find_checkpoint("photo", checkpoints) is a
    # otherwise the shortest title containing the query wins
    assert find_checkpoint("hoto", checkpoints) is c
    assert find_checkpoint("v2.safe", checkpoints) is b
    # a trailing [hash] that matches nothing is stripped before the substring search
    assert find_checkpoint("photo_v2.safetensors [0123456789]", checkpoints) is b
    assert find_checkpoint("nothing", checkpoints) is None


def test_lookup_refuses_escaping_queries() -> None:
    evil = info("../outside.safetensors")  # even if such a name were listed
    checkpoints = [evil, info("/etc/passwd")]
    for query in ["../outside.safetensors", "/etc/passwd", "C:\\x.ckpt", "a/../../b", ""]:
        assert find_checkpoint(query, checkpoints) is None
