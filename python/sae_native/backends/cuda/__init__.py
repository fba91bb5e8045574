"""The CUDA backend: sae_native._cuda's kernels (cuda/), registered for CUDA tensors when the module
was built. ``ops.py`` binds the launch sequences (``launch.py``) to a runtime, ``plan.py`` sizes
the fused encode for the device, ``candidate_keys.py`` reads the kernels' sort keys in torch."""
from .. import registry
from . import ops

registry.register("cuda", ops.KERNELS)
