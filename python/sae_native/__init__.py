"""sae-native: native kernels for sparse autoencoders on language-model activations.

    import sae_native as sn
    sae = sn.SAE(W_enc, b_enc, W_dec, b_dec, activation="topk", k=32)
    codes = sae.encode(x)             # SparseCodes: values, indices [..., k]
    x_hat = sae.decode(codes)         # or sae(x)
    y = sae.steer(x, {1234: 50.0})    # clamp feature 1234 to 50, keeping the SAE error
"""
from . import _ops  # noqa: F401  (declares the torch.ops.sae_native ops)
from . import backends  # noqa: F401  (registers their kernels)
from .backends.encode_paths import set_encode_path
from . import functional
from ._runtime import _init_isa, _init_threads, build_info, get_num_threads, set_num_threads
from .codes import SparseCodes
from .features import FeatureMatch, find_features
from .feature_browser import dashboard
from .loading import load
from .hooks import attach, record, splice, steer
from .sae import SAE
from .stats import FeatureStats, feature_stats
from . import distributed, store
from .store import ActivationStore
from .training import Trainer, TrainConfig, ce_loss_recovered, evaluate, stream_activations, train

__version__ = build_info()["version"]
__all__ = ["SAE", "SparseCodes", "functional", "distributed", "build_info", "set_num_threads", "get_num_threads", "set_encode_path", "record",
           "splice", "steer", "attach", "feature_stats", "FeatureStats", "load", "train", "Trainer", "TrainConfig",
           "evaluate", "ce_loss_recovered", "stream_activations", "find_features", "FeatureMatch", "dashboard", "store", "ActivationStore",
           "__version__"]

_init_isa()
_init_threads()
