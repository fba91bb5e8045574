"""The sizing of sharded training runs (sae-native plan, sn.distributed.plan)."""
import json
import math

import pytest

from sae_native.cli import main
from sae_native.distributed.plan import bytes_per_latent, measure_rates, plan


def test_bytes_per_latent_counts_masters_gradients_moments_and_copies():
    d = 7
    params = 2 * d + 2
    assert bytes_per_latent(d, "float32", "adam") == params * 16 + 24
    assert bytes_per_latent(d, "bfloat16", "adam") == params * 16 + 2 * d * 2 + 24
    assert bytes_per_latent(d, "float32", "sgd") == params * 8 + 24
    assert bytes_per_latent(d, "bfloat16", "none") == params * 2
    with pytest.raises(ValueError, match="optimizer: expected one of"):
        bytes_per_latent(d, "float32", "lion")
    with pytest.raises(ValueError, match="weight_dtype: expected one of"):
        bytes_per_latent(d, "int8", "adam")


@pytest.mark.parametrize("d_in,d_sae,mem", [(4096, 34_000_000, 80.0), (8192, 34_000_000, 141.0), (768, 24576, 80.0),
                                            (13, 1, 1.0)])
def test_the_plan_takes_the_fewest_shards_that_fit(d_in, d_sae, mem):
    p = plan(d_in, d_sae, device_memory_gb=mem)
    per = bytes_per_latent(d_in)
    assert p.latents_per_shard == math.ceil(d_sae / p.shards)
    assert p.memory_per_device_gb <= 0.85 * mem + 1e-9                   # fits the headroom
    if p.shards > 1:                                                      # and one shard fewer would not
        assert math.ceil(d_sae / (p.shards - 1)) * per / 1e9 > 0.85 * mem - (p.memory_per_device_gb -
                                                                            p.latents_per_shard * per / 1e9)
        assert p.exchanged_per_step_gb > 0
    else:
        assert p.exchanged_per_step_gb == 0


def test_the_step_estimate_is_the_work_divided_by_the_given_rates_and_errors():
    # No clock is read here, and nothing is held to a time: the plan divides counted FLOPs and
    # bytes by rates the caller gives, and the test checks that arithmetic as ratios.
    p = plan(4096, 34_000_000, device_memory_gb=80, tflops=400.0, memory_gb_s=3000.0, link_gb_s=400.0)
    compute = p.flop_per_step / 400e12                      # each part: work / given rate
    adam = p.latents_per_shard * p.bytes_per_latent * 2 / 3000e9
    link = p.exchanged_per_step_gb / 400.0
    shares = p.step_shares
    assert set(shares) == {"compute", "optimizer", "exchange"} and sum(shares.values()) == pytest.approx(1.0)
    assert shares["optimizer"] / shares["compute"] == pytest.approx(adam / compute)
    assert shares["exchange"] / shares["compute"] == pytest.approx(link / compute)
    # the encoder GEMM alone is part of the compute, so it is less than the whole step
    assert 2 * 4096 * 4096 * p.latents_per_shard / p.flop_per_step * shares["compute"] < 1.0
    # twice every rate: twice the throughput, and the same shares
    fast = plan(4096, 34_000_000, device_memory_gb=80, tflops=800.0, memory_gb_s=6000.0, link_gb_s=800.0)
    assert fast.estimated_tokens_per_second / p.estimated_tokens_per_second == pytest.approx(2.0)
    assert fast.step_shares == pytest.approx(shares)
    no_link = plan(4096, 34_000_000, tflops=400.0, memory_gb_s=3000.0)
    assert no_link.step_shares is None and no_link.estimated_tokens_per_second is None
    more = plan(4096, 34_000_000, replicas=4, tflops=400.0, memory_gb_s=3000.0, link_gb_s=400.0)
    assert more.exchanged_per_step_gb > p.exchanged_per_step_gb                # + the gradients
    with pytest.raises(ValueError, match="d_sae: expected an int >= 1"):
        plan(4096, 0)
    with pytest.raises(ValueError, match="cannot hold a step"):
        plan(65536, 10, device_memory_gb=0.001)


def test_measured_rates_are_positive():
    rates = measure_rates("cpu", d_in=64, d_sae=256, n=64)
    assert rates["tflops"] > 0 and rates["memory_gb_s"] > 0


def test_cli_plan_prints_the_worked_example(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", "--d-in", "4096,8192", "--d-sae", "34M", "--device-memory", "80,141", "--json",
                 str(out)]) == 0
    text = capsys.readouterr().out
    assert "34,000,000 latents" in text and "s/step needs" in text
    plans = json.loads(out.read_text())["plans"]
    assert [(p["d_in"], p["device_memory_gb"]) for p in plans] == [(4096, 80), (4096, 141), (8192, 80), (8192, 141)]
    assert plans[0]["shards"] == plan(4096, 34_000_000, device_memory_gb=80).shards
    with pytest.raises(SystemExit):
        main(["plan", "--d-in", "4096", "--d-sae", "lots"])
    assert "--d-sae may end in K, M or B" in capsys.readouterr().err
