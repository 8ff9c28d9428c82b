"""One job's extra networks: prompt tags and embedding words -> what sampling uses.

`activate_networks` reads the job's prompts once, before sampling, and returns an
`ActiveNetworks`: the U-Net callable and the conditioner to use (patched clones when
a LoRA is active, the shared ones otherwise; the U-Net callable also carries the
job's hypernetworks as a context transform), the embedding table, the infotext keys
(`Lora hashes`, `TI hashes`, exactly as A1111 writes them) and the warnings. The
loaded model is only read. Tags in negative prompts are removed and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modules.conditioning.conditioner import Conditioner
from modules.conditioning.embeddings import EmbeddingTable
from modules.conditioning.flow_conditioner import FlowConditioner
from modules.conditioning.prompt_parser import (
    ExtraNetworkTag,
    extract_extra_networks,
    strip_comments,
)
from modules.devices import execution_device
from modules.models.hashes import HashCache
from modules.networks.embeddings import EmbeddingLibrary, used_embeddings
from modules.networks.hypernetwork_library import (
    HYPERNET_TAG,
    AttentionWidths,
    HypernetworkLibrary,
    activate_hypernetworks,
)
from modules.networks.library import LoraLibrary
from modules.networks.lora import LORA_TAGS, activate_loras, merge_warnings


class NetworkRegistry:
    """The runtime's LoRA, embedding and hypernetwork libraries (one each, shared by all jobs)."""

    def __init__(self, *, lora_dir: Path, embeddings_dir: Path, hypernetwork_dir: Path,
                 hash_cache: HashCache) -> None:
        self.loras = LoraLibrary(folder=lora_dir, hash_cache=hash_cache)
        self.embeddings = EmbeddingLibrary(folder=embeddings_dir, hash_cache=hash_cache)
        self.hypernetworks = HypernetworkLibrary(folder=hypernetwork_dir)

    @staticmethod
    def for_paths(paths, hash_cache: HashCache) -> "NetworkRegistry":
        return NetworkRegistry(lora_dir=paths.lora_dir, embeddings_dir=paths.embeddings_dir,
                               hypernetwork_dir=paths.hypernetwork_dir, hash_cache=hash_cache)


@dataclass
class ActiveNetworks:
    """What one job samples with."""

    unet: Callable
    conditioner: Conditioner
    embeddings: EmbeddingTable | None
    cache_token: tuple = ()
    extra_params: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def prompt_tags(prompts: list[str], *, comments: bool) -> list[ExtraNetworkTag]:
    """Tags of the distinct prompts, in order (a tag repeated in every prompt counts once)."""
    tags = []
    for prompt in dict.fromkeys(prompts):
        text = strip_comments(prompt) if comments else prompt
        tags += extract_extra_networks(text)[1]
    return tags


def clean_texts(prompts: list[str], *, comments: bool) -> list[str]:
    return [extract_extra_networks(strip_comments(p) if comments else p)[0]
            for p in dict.fromkeys(prompts)]


def activate_networks(registry: NetworkRegistry, loaded, prompts: list[str],
                      negative_prompts: list[str], *, comments: bool = True) -> ActiveNetworks:
    """See the module docstring; `loaded` is a `LoadedModel`."""
    warnings: list[str] = []
    tags = prompt_tags(prompts, comments=comments)
    loras = [tag for tag in tags if tag.name in LORA_TAGS]
    hypernets = [tag for tag in tags if tag.name == HYPERNET_TAG]
    for tag in tags:
        if tag.name not in (*LORA_TAGS, HYPERNET_TAG):
            _warn(warnings, f"extra network <{tag.name}:...> is not available and was ignored")
    if prompt_tags(negative_prompts, comments=comments):
        _warn(warnings, "extra network tags in the negative prompt are ignored")
    activation = activate_loras(loaded.patcher, registry.loras, loras)
    warnings += activation.warnings + merge_warnings(activation)
    patcher = activation.patcher
    if hypernets and loaded.family.is_flow:
        _warn(warnings, "hypernetworks apply to U-Net models only; <hypernet:...> was ignored")
    elif hypernets:
        hyper = activate_hypernetworks(registry.hypernetworks, hypernets,
                                       widths=AttentionWidths.of(loaded.family.unet),
                                       device=execution_device(loaded.model.unet))
        warnings += hyper.warnings
        patcher = patcher.with_context_transform(hyper.transform)
    conditioner, token = loaded.conditioner, ()
    if patcher.patches_text_encoders():
        token = patcher.key
        conditioner = patched_conditioner(loaded, patcher)
    extra = {}
    if activation.infotext_value():
        extra["Lora hashes"] = activation.infotext_value()
    table, ti_hashes = embeddings_for(registry, loaded, prompts + negative_prompts, comments)
    if ti_hashes:
        extra["TI hashes"] = ti_hashes
    return ActiveNetworks(unet=patcher.unet(), conditioner=conditioner, embeddings=table,
                          cache_token=token, extra_params=extra, warnings=warnings)


def patched_conditioner(loaded, patcher) -> Conditioner:
    """A conditioner of the loaded one's kind over the patcher's text encoders."""
    base = loaded.conditioner
    # A flow family may run without one of its encoders (SD3 without T5): None stays None.
    encoders = [None if shared is None else patcher.text_encoder(spec.name)
                for spec, shared in zip(loaded.family.text_encoders, base.encoders)]
    if isinstance(base, FlowConditioner):
        return FlowConditioner(encoders=encoders, tokenizer=base.tokenizer,
                               family=loaded.family, t5_tokenizer=base.t5_tokenizer)
    return Conditioner(encoders=encoders, tokenizer=base.tokenizer, family=loaded.family)


def encoder_widths(loaded) -> dict[str, int]:
    return {spec.name: spec.config.hidden_size for spec in loaded.family.text_encoders}


def embeddings_for(registry: NetworkRegistry, loaded, prompts: list[str],
                   comments: bool) -> tuple[EmbeddingTable | None, str | None]:
    """The model's embedding table (None when empty) and the `TI hashes` value."""
    tokenizer = loaded.conditioner.tokenizer
    found = registry.embeddings.for_model(encoder_widths(loaded), tokenizer.encode)
    if not found.loaded:
        return None, None
    first_encoder = loaded.family.text_encoders[0].name
    names = used_embeddings(found.table, tokenizer.encode,
                            clean_texts(prompts, comments=comments), first_encoder)
    hashes = []
    for name in names:
        short = registry.embeddings.shorthash(found.loaded[name])
        hashes.append(f"{name.replace(':', '').replace(',', '')}: {short}")
    return found.table, ", ".join(hashes) or None


def _warn(warnings: list[str], message: str) -> None:
    if message not in warnings:
        warnings.append(message)
