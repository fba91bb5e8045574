"""What every format loader shares: reading files safely, checking tensors, building the SAE."""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional, Sequence

import torch
from torch import Tensor

_DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32, "float64": torch.float64,
           "double": torch.float64, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
           "half": torch.float16, "fp16": torch.float16}
PROGRESS_BYTES = 2 ** 30  # files larger than this show a progress bar (progress=None)


class FormatError(ValueError):
    """A file that does not hold what its format promises (names the file and the tensor)."""


def parse_dtype(text: Any, where: str) -> torch.dtype:
    """'float32', 'torch.bfloat16', ... as a torch dtype."""
    if isinstance(text, torch.dtype):
        return text
    key = str(text).replace("torch.", "").strip().lower()
    if key not in _DTYPES:
        raise FormatError(f"{where}: unknown dtype {text!r}")
    return _DTYPES[key]


def read_json(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise FormatError(f"{path}: JSON nested too deeply to be a config file") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not a UTF-8 text file ({e})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def cfg_int(cfg: Dict[str, Any], key: str, where: str, lo: int = 1, hi: Optional[int] = None) -> int:
    """cfg[key] as an int in [lo, hi] (a JSON true is not an int here), or a FormatError naming
    the file (`where`) and the field."""
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise FormatError(f"{where}: expected an integer {key!r}, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise FormatError(f"{where}: {key!r} must be in {bound}, got {v}")
    return v


def cfg_number(cfg: Dict[str, Any], key: str, where: str, positive: bool = False) -> Optional[float]:
    """cfg[key] as a finite float (> 0 with `positive`), None when absent or null."""
    v = cfg.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FormatError(f"{where}: expected a number {key!r}, got {v!r}")
    v = float(v)
    if v != v or v in (float("inf"), float("-inf")):
        raise FormatError(f"{where}: {key!r} must be finite, got {v}")
    if positive and v <= 0:
        raise FormatError(f"{where}: {key!r} must be > 0, got {v}")
    return v


def _bar(total: int, enabled: Optional[bool], nbytes: int, desc: str):
    if enabled is None:
        enabled = nbytes > PROGRESS_BYTES
    from .._progress import bar
    return bar(enabled, total=total, desc=desc, unit="tensor")


def read_safetensors(path: str, names: Optional[Iterable[str]] = None, progress: Optional[bool] = None
                     ) -> Dict[str, Tensor]:
    """The tensors of a safetensors file (only `names` when given), read one at a time from the
    memory-mapped file, so at most one copy of the weights is ever held."""
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            keys = list(f.keys())
            wanted = keys if names is None else [n for n in names if n in keys]
            bar = _bar(len(wanted), progress, os.path.getsize(path), os.path.basename(path))
            out = {}
            for name in wanted:
                out[name] = f.get_tensor(name)
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
            return out
    except (OSError, RuntimeError, Exception) as e:  # safetensors raises SafetensorError on truncation
        if isinstance(e, (FileNotFoundError, FormatError)):
            raise
        raise FormatError(f"{path}: cannot read as safetensors ({type(e).__name__}: {e}); truncated or not a "
                          "safetensors file?") from None


def read_npz(path: str, names: Iterable[str], shapes: Optional[Dict[str, Sequence[int]]] = None
             ) -> Dict[str, Tensor]:
    """The arrays `names` of an .npz file (those present; others are never decompressed), each
    checked from its .npy header before it is read: a floating dtype, the shape `shapes` gives
    for it (if any), and an uncompressed size that matches the header, so a small file declaring
    a huge array is refused instead of filling memory."""
    import zipfile

    import numpy as np
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    shapes = shapes or {}
    out: Dict[str, Tensor] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = {info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")}
            for name in names:
                info = members.get(name)
                if info is None:
                    continue
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        raise FormatError(f"{path}: array {name!r} has .npy format version {version}, expected 1.0 or 2.0")
                    header = f.tell() if f.seekable() else None
                    if dtype.kind != "f":
                        raise FormatError(f"{path}: array {name!r} has dtype {dtype}, expected a floating-point array")
                    want = shapes.get(name)
                    if want is not None and tuple(shape) != tuple(want):
                        raise FormatError(f"{path}: array {name!r} has shape {list(shape)}, expected {list(want)}")
                    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                    if header is not None and info.file_size != header + nbytes:
                        raise FormatError(f"{path}: array {name!r} declares {list(shape)} {dtype} ({nbytes} bytes) but "
                                          f"its entry holds {info.file_size - header} bytes; truncated or corrupt")
                    data = np.frombuffer(f.read(nbytes), dtype=dtype)
                    if data.size * dtype.itemsize != nbytes:
                        raise FormatError(f"{path}: array {name!r} is truncated")
                    arr = data.reshape(shape, order="F" if fortran else "C")
                # frombuffer's array is read-only; torch wants a writable one (one copy of the array).
                out[name] = torch.from_numpy(np.array(arr, order="C"))
    except FormatError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise FormatError(f"{path}: cannot read as .npz ({type(e).__name__}: {e}); truncated?") from None
    return out


def torch_load(path: str) -> Any:
    """torch.load with weights_only=True (tensors, numbers, strings, containers), memory-mapped
    when the file allows. A pickle that would run code is refused, never executed."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) file
    except pickle.UnpicklingError as e:
        raise FormatError(f"{path}: refusing to load: the file holds pickled objects beyond tensors, numbers and "
                          f"strings, and unpickling them could run code (torch.load weights_only=True said: "
                          f"{str(e).splitlines()[0]})") from None
    except (EOFError, RuntimeError, ValueError) as e:
        raise FormatError(f"{path}: cannot read as a torch file ({type(e).__name__}: {e}); truncated?") from None


def tensor(state: Dict[str, Any], name: str, file: str, shape: Optional[Sequence[int]] = None,
           *aliases: str) -> Tensor:
    """state[name] (or the first alias present), checked: a float tensor of `shape`."""
    for key in (name, *aliases):
        if key in state:
            t = state[key]
            break
    else:
        names = " or ".join(repr(k) for k in (name, *aliases))
        raise FormatError(f"{file}: missing tensor {names} (the file has: {', '.join(sorted(map(str, state)))})")
    if not isinstance(t, Tensor):
        try:
            t = torch.as_tensor(t)
        except (TypeError, ValueError, RuntimeError):
            raise FormatError(f"{file}: {key!r} is a {type(t).__name__}, expected a tensor") from None
    if not t.is_floating_point():
        raise FormatError(f"{file}: tensor {key!r} has dtype {t.dtype}, expected a floating-point tensor")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise FormatError(f"{file}: tensor {key!r} has shape {list(t.shape)}, expected {list(shape)}")
    return t


@dataclass
class Spec:
    """An SAE in sae-native's terms, before dtype/device conversion."""
    W_enc: Tensor
    b_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    activation: str
    k: Optional[int] = None
    threshold: Optional[Tensor] = None
    apply_b_dec_to_input: bool = True
    normalize: str = "none"
    dtype: Optional[torch.dtype] = None  # the format's stated dtype, if any
    metadata: Dict[str, Any] = field(default_factory=dict)

    def fold_input_scale(self, s: float) -> None:
        """A constant input scaling x -> s * x (reconstruction divided back), folded into the
        weights as SAELens's fold_activation_norm_scaling_factor does."""
        self.W_enc = self.W_enc * s
        self.W_dec = self.W_dec / s
        self.b_dec = self.b_dec / s

    def fold_decoder_norm_rescale(self) -> None:
        """Pre-activations multiplied by ||W_dec[f]|| and decode dividing them back (SAELens's
        rescale_acts_by_decoder_norm), folded into W_enc, b_enc and W_dec."""
        norms = self.W_dec.float().norm(dim=1).to(self.W_dec.dtype)
        self.W_enc = self.W_enc * norms
        self.b_enc = self.b_enc * norms
        self.W_dec = self.W_dec / norms[:, None]

    def fold_feature_scale(self, scale: Tensor) -> None:
        """Decode multiplying each feature by scale[f] before W_dec (finetuning scaling factors)."""
        self.W_dec = self.W_dec * scale.to(self.W_dec.dtype)[:, None]


def gated_as_jumprelu(W_enc: Tensor, b_gate: Tensor, b_mag: Tensor, r_mag: Tensor):
    """A gated SAE, z = (u W + b_gate > 0) * relu(u (W * exp(r_mag)) + b_mag), is exactly a JumpReLU
    SAE with one GEMM: W' = W * exp(r_mag), b' = b_mag and threshold b_mag - exp(r_mag) * b_gate
    (the gate opens where pi_mag = exp(r_mag) (u W) + b_mag passes it). Returns (W', b', threshold)."""
    scale = r_mag.exp()
    return W_enc * scale, b_mag, b_mag - scale * b_gate
