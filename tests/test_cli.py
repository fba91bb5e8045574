"""The sae-native command: info and check."""
import json

import pytest

from sae_native.cli import main


def test_info_prints_build_info(capsys):
    assert main(["info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "cpu_isa" in info and "version" in info


def test_check_small_shape_passes(capsys):
    assert main(["check", "--shape", "17,13,301,7", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "check: OK" in out and "encode topk" in out and "steer jumprelu" in out


def test_check_takes_a_shape_without_k(capsys):
    # k only sizes the TopK half of the check (min(32, d_sae) by default); JumpReLU needs none.
    assert main(["check", "--shape", "9,13,20", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "check: OK" in out and "k=20" in out


@pytest.mark.parametrize("shape", ["3,2,x", "1,2", "1,2,3,4", "0,2,3,1", "-1,2,3,1", "1,2,0"])
def test_check_rejects_bad_shapes(shape, capsys):
    with pytest.raises(SystemExit) as e:
        main(["check", f"--shape={shape}"])
    assert e.value.code == 2
    assert "expected N,d_in,d_sae[,k]" in capsys.readouterr().err


def test_unknown_command_exits_2():
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
