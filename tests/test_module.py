"""SAE as an nn.Module: Parameters, state_dict with SAELens keys, in-place .to(), optimizer
fine-tuning through the ops' autograd, nn.Sequential; SparseCodes len / indexing; saving rules."""
import pytest
import torch
from torch import nn

import sae_native as sn
from helpers import check_topk_codes, make_pair, make_weights, randn
from reference import RefSAE


def test_weights_are_parameters_with_saelens_names():
    sae = sn.SAE(**make_weights(8, 24, "jumprelu"))
    assert isinstance(sae, nn.Module)
    names = dict(sae.named_parameters())
    assert list(names) == ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"]
    assert all(isinstance(p, nn.Parameter) for p in names.values())
    assert list(sae.state_dict()) == ["W_enc", "b_enc", "W_dec", "b_dec", "threshold"]
    topk = sn.SAE(**make_weights(8, 24, "topk", 4))
    assert list(topk.state_dict()) == ["W_enc", "b_enc", "W_dec", "b_dec"]   # no threshold


def test_parameters_share_the_given_storage_and_requires_grad():
    w = make_weights(8, 24, "topk", 4)
    sae = sn.SAE(**w)
    assert sae.W_enc.data_ptr() == w["W_enc"].data_ptr()          # no copy
    assert not any(p.requires_grad for p in sae.parameters())     # as given: frozen
    w2 = {k: (v.requires_grad_() if isinstance(v, torch.Tensor) else v) for k, v in make_weights(8, 24, "relu").items()}
    assert all(p.requires_grad for p in sn.SAE(**w2).parameters())


def test_state_dict_round_trip_and_repacking():
    a = sn.SAE(**make_weights(16, 40, "topk", 5, seed=1))
    b = sn.SAE(**make_weights(16, 40, "topk", 5, seed=2))
    x = randn(7, 16)
    before = b.encode(x)                     # packs b's W_enc
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.encode(x).indices, a.encode(x).indices)
    assert not torch.equal(b.encode(x).indices, before.indices)
    with pytest.raises(RuntimeError, match="W_enc"):
        b.load_state_dict({**a.state_dict(), "W_enc": torch.zeros(3, 3)})


def test_load_a_saelens_state_dict_by_key():
    pytest.importorskip("sae_lens")
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    ref = JumpReLUSAE(JumpReLUSAEConfig(d_in=12, d_sae=30, dtype="float32", device="cpu"))
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
        ref.threshold.abs_()
    sae = sn.SAE(**make_weights(12, 30, "jumprelu"))
    sae.load_state_dict(ref.state_dict())
    x = randn(9, 12)
    with torch.no_grad():
        torch.testing.assert_close(sae(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("form", ["positional", "keyword", "half", "double"])
def test_to_is_in_place_with_the_usual_forms(form):
    w = make_weights(8, 24, "topk", 4)
    sae = sn.SAE(**w)
    x = randn(5, 8)
    want = {"positional": torch.float64, "keyword": torch.bfloat16, "half": torch.float16, "double": torch.float64}[form]
    out = {"positional": lambda: sae.to(torch.float64), "keyword": lambda: sae.to(dtype=torch.bfloat16),
           "half": sae.half, "double": sae.double}[form]()
    assert out is sae and sae.dtype == want and all(p.dtype == want for p in sae.parameters())
    xin = x.double() if want == torch.float64 else x
    ref = RefSAE(**{**w, **{k: getattr(sae, k) for k in ("W_enc", "b_enc", "W_dec", "b_dec")}})
    check_topk_codes(sae.encode(xin), ref, xin)     # repacked for the new dtype
    sae.to("cpu")
    with pytest.raises((TypeError, RuntimeError)):
        sae.to("not a device")


def test_finetuning_with_a_torch_optimizer():
    torch.manual_seed(0)
    sae = sn.SAE(**make_weights(16, 64, "topk", 8)).requires_grad_()
    x = randn(256, 16)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = (sae(x) - x).pow(2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in sae.parameters())
        opt.step()                           # in place: the packed encoder follows the version counter
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    # the optimizer's last step is what encode sees
    ref = RefSAE(W_enc=sae.W_enc.detach(), b_enc=sae.b_enc.detach(), W_dec=sae.W_dec.detach(),
                 b_dec=sae.b_dec.detach(), activation="topk", k=8)
    check_topk_codes(sae.encode(x.detach()), ref, x)


def test_in_a_sequential_and_with_module_hooks():
    sae = sn.SAE(**make_weights(8, 24, "relu"))
    model = nn.Sequential(nn.Linear(8, 8), sae, nn.ReLU())
    x = randn(3, 8)
    seen = []
    sae.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    y = model(x)
    assert y.shape == (3, 8) and seen == [torch.Size([3, 8])]
    assert "SAE(d_in=8, d_sae=24, activation='relu'" in repr(model)


def test_copy_is_independent():
    sae = sn.SAE(**make_weights(8, 24, "topk", 4))
    c = sae.copy()
    with torch.no_grad():
        c.W_enc.zero_()
    assert sae.W_enc.abs().sum() > 0 and c.k == 4


def test_transposed_w_enc_is_named():
    w = make_weights(8, 24, "topk", 4)
    w["W_enc"] = w["W_enc"].t()
    with pytest.raises(ValueError, match=r"W_enc: got shape \[24, 8\], which looks transposed.*pass W_enc.T"):
        sn.SAE(**w)


def test_save_refuses_a_file_name_and_an_existing_sae(tmp_path):
    sae = sn.SAE(**make_weights(8, 24, "topk", 4))
    with pytest.raises(ValueError, match=r"names a file, but an SAE is saved as a folder"):
        sae.save(tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    sae.save(tmp_path / "s")
    with pytest.raises(FileExistsError, match="already holds an SAE.*overwrite=True"):
        sae.save(tmp_path / "s")
    sae.save(tmp_path / "s", overwrite=True)
    (tmp_path / "f").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        sae.save(tmp_path / "f")
    assert torch.equal(sn.load(tmp_path / "s").W_enc, sae.W_enc)


# ---- SparseCodes over the batch dimensions -------------------------------------------------

def test_codes_len_index_slice_and_iterate():
    sae, ref = make_pair(8, 40, "jumprelu")
    x = randn(4, 6, 8)
    codes = sae.encode(x)
    assert len(codes) == 4
    assert codes[1].shape == (6,) and torch.equal(codes[1].values, codes.values[1])
    assert codes[1:3].shape == (2, 6) and torch.equal(codes[1:3].indices, codes.indices[1:3])
    assert codes[0, 2].shape == () and torch.equal(codes[0, 2].values, codes.values[0, 2])
    assert codes[..., 2].shape == (4,)
    mask = torch.tensor([True, False, True, False])
    assert torch.equal(codes[mask].values, codes.values[mask])
    assert torch.equal(codes[torch.tensor([3, 0])].counts, codes.counts[[3, 0]])
    torch.testing.assert_close(sae.decode(codes[2]), sae.decode(codes)[2])
    assert [c.shape for c in codes] == [torch.Size([6])] * 4
    with pytest.raises(IndexError, match="too many indices"):
        codes[0, 0, 0]
    with pytest.raises(TypeError, match="single row"):
        len(codes[0, 0])


def test_normalized_codes_keep_their_statistics_when_indexed():
    w = make_weights(8, 40, "topk", 4, normalize="layer_norm")
    sae = sn.SAE(**w)
    x = randn(5, 8) * 3 + 1
    codes = sae.encode(x)
    torch.testing.assert_close(sae.decode(codes[1:4]), sae.decode(codes)[1:4])
