"""Drop-in forward hooks on any torch.nn.Module: record, splice and steer an SAE at a site.

    with sn.steer(model, "model.layers.15", sae, {feature: ("max", 10)}):
        model.generate(...)          # every forward, prompt and each new token, is steered

A site is a module path (``"model.layers.15"``), a module, or a TransformerLens hook name on a
HookedTransformer. The site's output may be a tensor or a tuple/list whose first element is the
hidden state (Hugging Face decoder layers, across transformers versions). The SAE computes in its
own precision: a bf16 model's activations are cast to float32 for the SAE and the result cast back
to bf16, so a bf16 model with an fp32 SAE just works; the SAE must be on the model's device
(``sae.to(device)``).
"""
from __future__ import annotations

import difflib
from typing import Callable, List, Optional, Union

import torch
from torch import Tensor, nn

from .codes import SparseCodes

Site = Union[str, nn.Module]
POSITIONS = ("all", "prompt", "generated")


# ---- finding the site and its hidden state ------------------------------------------------------

def resolve_site(model: nn.Module, site: Site) -> nn.Module:
    """The module a site names; a clear error listing close matches when there is none."""
    if isinstance(site, nn.Module):
        return site
    if not isinstance(site, str):
        raise TypeError(f"site: expected a module path string, a module or a TransformerLens hook name, "
                        f"got {type(site).__name__}")
    hook_dict = getattr(model, "hook_dict", None)  # TransformerLens HookedTransformer
    if isinstance(hook_dict, dict) and site in hook_dict:
        return hook_dict[site]
    try:
        return model.get_submodule(site)
    except AttributeError:
        pass
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(hook_dict, dict):
        names += list(hook_dict)
    close = difflib.get_close_matches(site, names, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else f"; the model has {len(names)} named modules"
    raise ValueError(f"site: no module {site!r} in {type(model).__name__}{hint}")


def split_output(output):
    """(hidden state, function rebuilding the output around a new hidden state)."""
    if isinstance(output, Tensor):
        return output, lambda h: h
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0], lambda h: type(output)([h, *output[1:]])
    raise TypeError(f"site output: expected a tensor or a tuple/list whose first element is the hidden state, "
                    f"got {type(output).__name__}")


class _StopForward(Exception):
    pass


def _run_until_stopped(model: nn.Module, *args, **inputs) -> None:
    """``model(*args, **inputs)`` without gradients; a hook's _StopForward ends it quietly."""
    with torch.no_grad():
        try:
            model(*args, **inputs)
        except _StopForward:
            pass


class SiteCapture:
    """Runs a model only as far as it must to see the outputs of ``sites``: ``capture(inputs)``
    (a dict of model inputs) returns {site: hidden state}, and the forward stops right after the
    last of them (later layers are never computed). Use as a context manager (hooks attached
    inside)."""

    def __init__(self, model: nn.Module, sites: List[Site]):
        self.model, self.sites = model, list(sites)
        self.modules = [resolve_site(model, s) for s in self.sites]
        self.captured: dict = {}
        self._handles: list = []

    def _hook_for(self, site):
        def hook(mod, args, output):
            self.captured[site] = split_output(output)[0].detach()
            if len(self.captured) == len(self.sites):
                raise _StopForward
        return hook

    def __enter__(self) -> "SiteCapture":
        self._handles = [m.register_forward_hook(self._hook_for(s)) for s, m in zip(self.sites, self.modules)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __call__(self, inputs: dict) -> dict:
        self.captured = {}
        _run_until_stopped(self.model, **inputs)
        missing = [s for s in self.sites if s not in self.captured]
        if missing:
            raise RuntimeError(f"the model never ran the site(s) {missing}")
        return self.captured


def _check_device(hidden: Tensor, sae) -> None:
    if hidden.device != sae.device:
        raise RuntimeError(f"the site's activations are on {hidden.device} but the SAE is on {sae.device}: "
                           f"move it with sae = sae.to({str(hidden.device)!r})")


def _check_width(hidden: Tensor, sae, site) -> None:
    if hidden.shape[-1] != sae.d_in:
        raise ValueError(f"site {site!r}: its hidden state has width {hidden.shape[-1]} but the SAE's d_in is "
                         f"{sae.d_in}")


# ---- the handle -----------------------------------------------------------------------------------

class SiteHook:
    """A forward hook at one site, attached when made: removed by ``remove()`` or on leaving a
    ``with`` block (also when the block raises). A removed handle can be used again: entering a
    ``with`` block (or ``attach()``) attaches it once more, behind the hooks attached meanwhile.
    Hooks on one site run in the order they were attached."""

    def __init__(self, model: nn.Module, site: Site, sae):
        self.model, self.site, self.sae = model, site, sae
        self.module = resolve_site(model, site)
        self._handle = None
        self.attach()

    def attach(self) -> "SiteHook":
        """Attaches the hook again after ``remove()`` (nothing to do while it is attached)."""
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def _hook(self, module, args, kwargs, output):
        hidden, rebuild = split_output(output)
        _check_width(hidden, self.sae, self.site)
        _check_device(hidden, self.sae)
        new = self.on_forward(hidden, kwargs)
        return None if new is None else rebuild(new)

    def on_forward(self, hidden: Tensor, kwargs: dict) -> Optional[Tensor]:
        raise NotImplementedError

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()


class Recording(SiteHook):
    """Codes of every forward at the site. ``codes[i]`` is the i-th forward's SparseCodes
    (leading shape [batch, seq] of the hidden state, or [n] of the selected positions with a mask,
    whose indices are in ``positions[i]``); ``all()`` concatenates them into [total, k].

    With ``stop=True`` the forward ends right after the site: the layers after it (and the
    language-model head, often the largest matmul) never run. Run the model through
    ``forward(...)`` then, which ends the stopped forward quietly and returns nothing; a
    plain ``model(...)`` call would see the stop as an exception."""

    def __init__(self, model, site, sae, positions=None, stop=False):
        if positions is not None and not (isinstance(positions, Tensor) or callable(positions)):
            raise TypeError("positions: expected None, a bool mask over [batch, seq] or a callable hidden -> mask")
        if not isinstance(stop, bool):
            raise TypeError(f"stop: expected a bool, got {stop!r}")
        self.stop = stop
        self.positions_arg = positions
        self.codes: List[SparseCodes] = []
        self.positions: List[Optional[Tensor]] = []
        super().__init__(model, site, sae)

    def on_forward(self, hidden, kwargs):
        with torch.no_grad():
            mask = self.positions_arg
            if callable(mask) and not isinstance(mask, Tensor):
                mask = mask(hidden)
            if mask is None:
                self.codes.append(self.sae.encode(hidden))
                self.positions.append(None)
            else:
                mask = mask.to(hidden.device).bool()
                if mask.shape != hidden.shape[:-1]:
                    raise ValueError(f"positions: a mask of shape {list(mask.shape)} does not fit this forward's "
                                     f"activations {list(hidden.shape[:-1])}")
                self.codes.append(self.sae.encode(hidden[mask]))
                self.positions.append(mask.nonzero())
        if self.stop:
            raise _StopForward
        return None

    def forward(self, *args, **inputs) -> None:
        """``model(*args, **inputs)`` without gradients, as far as the site when ``stop``; the
        codes are then ``codes[-1]``."""
        _run_until_stopped(self.model, *args, **inputs)

    def all(self) -> SparseCodes:
        """Every recorded token's codes, concatenated: [total, k] (threshold codes padded to the
        widest)."""
        if not self.codes:
            raise ValueError("no forward has run at the site yet")
        flat = [c.flatten() for c in self.codes]
        width = max(c.k for c in flat)
        vals, idx = [], []
        for c in flat:
            pad = width - c.k
            vals.append(torch.nn.functional.pad(c.values, (0, pad)))
            idx.append(torch.nn.functional.pad(c.indices, (0, pad), value=-1))
        return SparseCodes(torch.cat(vals), torch.cat(idx), self.sae.d_sae)

    def clear(self) -> None:
        self.codes.clear()
        self.positions.clear()


def check_max_norm_ratio(ratio) -> Optional[float]:
    """``max_norm_ratio`` as write_store and splice take it: None, or a finite number >= 1."""
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))
                              or not 1 <= ratio < float("inf")):
        raise ValueError(f"max_norm_ratio: expected a finite number >= 1 or None, got {ratio!r}")
    return None if ratio is None else float(ratio)


def within_norm_ratio(hidden: Tensor, ratio: float, among: Optional[Tensor] = None) -> Tensor:
    """Which positions of ``hidden`` [..., d] have a norm at most ``ratio`` x the median norm of
    the positions ``among`` (a mask; default all): the others are massive activations, a few
    tokens with 100x the usual norm in many LLMs' middle layers."""
    norms = hidden.detach().float().norm(dim=-1)
    if among is not None:
        among = among.to(norms.device)
        if not bool(among.any()):
            return among.clone()
    ref = norms[among] if among is not None else norms.reshape(-1)
    return norms <= ratio * ref.median()


class Splice(SiteHook):
    """Replaces the activation by the SAE's reconstruction. With keep_error=True the output is
    x_hat + (x - x_hat), equal to x up to rounding: a check that the hook sits where you think.
    With max_norm_ratio, massive activations (norm above that multiple of the forward's median)
    pass through as they are: an SAE trained without them (write_store's max_norm_ratio) is not
    asked to reconstruct them."""

    def __init__(self, model, site, sae, keep_error: bool = False, max_norm_ratio: Optional[float] = None):
        if not isinstance(keep_error, bool):
            raise TypeError(f"keep_error: expected a bool, got {type(keep_error).__name__}")
        self.keep_error = keep_error
        self.max_norm_ratio = check_max_norm_ratio(max_norm_ratio)
        super().__init__(model, site, sae)

    def on_forward(self, hidden, kwargs):
        x_hat = self.sae(hidden)
        out = x_hat + (hidden - x_hat) if self.keep_error else x_hat
        if self.max_norm_ratio is None:
            return out
        return torch.where(within_norm_ratio(hidden, self.max_norm_ratio)[..., None], out, hidden)


class _PromptTracker:
    """Which positions of a forward belong to the prompt.

    Hugging Face models pass their layers the tokens' absolute positions (``position_ids``, or
    ``cache_position``). A forward in which every row starts at position 0 is a new prompt and
    sets each row's prompt length; later positions are generated tokens, whether or not a KV cache
    shortens the forward to one token. Without positions (other models), a forward of several
    tokens is taken as a new prompt and a forward of one token as a generated token.
    """

    def __init__(self):
        self.prompt_len: Optional[Tensor] = None

    def prompt_mask(self, hidden: Tensor, kwargs: dict) -> Tensor:
        lead = hidden.shape[:-1]
        pos = kwargs.get("position_ids")
        if pos is None:
            pos = kwargs.get("cache_position")
        if isinstance(pos, Tensor) and hidden.dim() == 3 and pos.shape[-1] == lead[-1]:
            pos = pos.to(hidden.device).expand(lead)
            # Decided on the device (no read-back): a forward whose rows all start at position 0 is
            # a new prompt (padding sits at 0 or 1); otherwise the last prompt's lengths hold, or
            # zeros when the hook joined mid-way.
            new_prompt = (pos.min(dim=1).values == 0).all()
            last = self.prompt_len
            if last is None or last.shape != (lead[0],) or last.device != pos.device:
                last = torch.zeros(lead[0], dtype=pos.dtype, device=pos.device)
            self.prompt_len = torch.where(new_prompt, pos.max(dim=1).values + 1, last)
            return pos < self.prompt_len[:, None]
        seq = lead[-1] if len(lead) >= 1 else 1
        if seq > 1 or self.prompt_len is None:
            self.prompt_len = torch.tensor([seq])
            return torch.ones(lead, dtype=torch.bool, device=hidden.device)
        return torch.zeros(lead, dtype=torch.bool, device=hidden.device)


class Steering(SiteHook):
    """Clamped reconstruction at the site on every forward (SAE.steer), including each token of
    ``model.generate`` with a KV cache, on all positions or only the prompt's or the generated ones."""

    def __init__(self, model, site, sae, clamp, mode="set", keep_error=True, where="always", positions="all"):
        if positions not in POSITIONS:
            raise ValueError(f"positions: expected one of {POSITIONS}, got {positions!r}")
        self.clamp = sae.parse_clamp(clamp)   # validated once, not on every token
        self.mode, self.keep_error, self.where, self.which = mode, keep_error, where, positions
        sae.steer(torch.zeros(1, sae.d_in, device=sae.device), self.clamp, mode=mode, keep_error=keep_error,
                  where=where)                 # checks mode / where / keep_error now, not mid-generation
        self.tracker = _PromptTracker()
        super().__init__(model, site, sae)

    def on_forward(self, hidden, kwargs):
        steer = lambda x: self.sae.steer(x, self.clamp, mode=self.mode, keep_error=self.keep_error,  # noqa: E731
                                         where=self.where)
        if self.which == "all":   # no prompt tracking: it reads positions back (a GPU sync) per forward
            return steer(hidden)
        mask = self.tracker.prompt_mask(hidden, kwargs)
        if self.which == "generated":
            mask = ~mask
        if _host_reads_free(mask):   # steer only the selected positions
            if bool(mask.all()):
                return steer(hidden)
            if not bool(mask.any()):
                return None
            out = hidden.clone()
            out[mask] = steer(hidden[mask])
            return out
        # On a GPU, reading the mask would wait for the device on every token: steer every
        # position and let the mask pick, on the device.
        return torch.where(mask[..., None], steer(hidden), hidden)


def _host_reads_free(t: Tensor) -> bool:
    """Reading t's values costs nothing on the CPU; elsewhere it waits for the device."""
    return t.device.type == "cpu"


# ---- the public functions ----------------------------------------------------------------------

def record(model: nn.Module, site: Site, sae, *, positions=None, stop: bool = False) -> Recording:
    """Records the SAE codes of the activation at ``site`` on every forward (see Recording;
    ``stop=True`` ends each forward at the site: run it with ``.forward(**inputs)``).
    Use as a context manager, or call ``.remove()``. Memory: O(tokens * k)."""
    return Recording(model, site, sae, positions, stop)


def splice(model: nn.Module, site: Site, sae, *, keep_error: bool = False,
           max_norm_ratio: Optional[float] = None) -> Splice:
    """Replaces the activation at ``site`` by the SAE reconstruction on every forward (except the
    massive activations, with ``max_norm_ratio``: see Splice)."""
    return Splice(model, site, sae, keep_error, max_norm_ratio)


def steer(model: nn.Module, site: Site, sae, clamp, *, mode: str = "set", keep_error: bool = True,
          where: str = "always", positions: str = "all") -> Steering:
    """Steers the activation at ``site`` on every forward: ``sae.steer(x, clamp, mode=, keep_error=,
    where=)`` (see SAE.steer; ``clamp={f: ("max", 10)}`` is 10 x f's max from sn.feature_stats),
    applied to ``positions`` "all", "prompt" or "generated" tokens."""
    return Steering(model, site, sae, clamp, mode, keep_error, where, positions)


_ACTIONS: dict = {"record": record, "splice": splice, "steer": steer}


def attach(model: nn.Module, site: Site, sae, action: str = "steer", *args, **kwargs) -> SiteHook:
    """``record``, ``splice`` or ``steer`` as a handle to keep outside a ``with`` block: the hook
    stays until ``handle.remove()``."""
    if action not in _ACTIONS:
        raise ValueError(f"action: expected one of {tuple(_ACTIONS)}, got {action!r}")
    fn: Callable = _ACTIONS[action]
    return fn(model, site, sae, *args, **kwargs)
