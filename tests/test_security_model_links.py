"""One rule for links in every model folder (modules/models/folders.py, docs/security.md):
links to files and folders are followed wherever they point, each real folder is walked
once (a loop neither hangs nor repeats), dangling links are left out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from modules.models.checkpoints import list_checkpoints
from modules.models.hashes import HashCache
from modules.models.vae_select import list_vaes
from modules.networks.embeddings import EmbeddingLibrary
from modules.networks.hypernetwork_library import HypernetworkLibrary
from modules.networks.library import LoraLibrary
from modules.upscaling.registry import UpscalerRegistry
from tests.helpers.controlnet import use_extension_package


def controlnet_stems(folder: Path) -> list[str]:
    use_extension_package()
    from easel_controlnet.library import list_models

    return [entry.stem for entry in list_models(folder)]


LISTERS = {
    "checkpoints": (".safetensors", lambda folder: [
        Path(info.path).stem for info in list_checkpoints([folder])]),
    "loras": (".safetensors", lambda folder: [
        entry.name
        for entry in LoraLibrary(folder=folder, hash_cache=HashCache(path=None)).list()]),
    "embeddings": (".pt", lambda folder: [
        path.stem for path, _, _ in EmbeddingLibrary(folder=folder,
                                                     hash_cache=HashCache(path=None)).scan()]),
    "hypernetworks": (".pt", lambda folder: [
        entry.name for entry in HypernetworkLibrary(folder=folder).list()]),
    "vaes": (".safetensors", lambda folder: [path.stem for path in list_vaes(folder)]),
    "upscalers": (".pth", lambda folder: [
        path.stem for path in UpscalerRegistry(folders=[folder]).model_files()]),
    "controlnets": (".safetensors", controlnet_stems),
}


@pytest.mark.parametrize("kind", sorted(LISTERS))
def test_links_are_followed_once_and_dangling_ones_left_out(tmp_path, kind):
    suffix, lister = LISTERS[kind]
    outside = tmp_path / "other-drive"
    (outside / "deeper").mkdir(parents=True)
    (outside / f"linked{suffix}").write_bytes(b"x" * 16)
    (outside / "deeper" / f"deep{suffix}").write_bytes(b"x" * 16)
    folder = tmp_path / "models" / kind
    folder.mkdir(parents=True)
    (folder / f"own{suffix}").write_bytes(b"x" * 16)
    os.symlink(outside / f"linked{suffix}", folder / f"linked{suffix}")
    os.symlink(outside / "deeper", folder / "linked-folder")
    os.symlink(outside / "deeper", folder / "same-folder-again")
    os.symlink(folder, folder / "loop")
    os.symlink(tmp_path / "gone.bin", folder / f"dangling{suffix}")
    assert sorted(lister(folder)) == ["deep", "linked", "own"]
