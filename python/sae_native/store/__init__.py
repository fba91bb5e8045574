"""An on-disk activation store: a model's activations at one or more sites, computed once and
read many times (training, evaluation) without recomputing the model or holding them in memory.

    sn.store.write_store(model, "model.layers.15", token_batches(tok, texts), "acts/")   # or: sae-native cache
    store = sn.ActivationStore("acts/")
    sae = sn.train(store, architecture="topk", d_sae=16384, k=32)

Layout of a store folder: ``manifest.json`` (sites and widths, dtype, the source, and per shard
its file, token count, byte size and CRC32) and ``shard-NNNNNN.safetensors`` files, each holding
one ``[tokens, width]`` tensor per site, named by the site. See docs/formats.md.
"""
from .manifest import FORMAT, VERSION
from .reader import ActivationStore
from .shards import ShardError
from .writer import write_store

__all__ = ["ActivationStore", "write_store", "ShardError", "FORMAT", "VERSION"]
