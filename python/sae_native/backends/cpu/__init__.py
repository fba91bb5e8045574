"""The CPU backend: sae_native._C's kernels (csrc/), registered for CPU tensors."""
from .. import registry
from . import ops

registry.register("cpu", ops.KERNELS)
