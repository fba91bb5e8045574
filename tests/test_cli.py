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


@pytest.mark.parametrize("shape", ["3,2,x", "1,2,3", "1,2,3,4", "0,2,3,1", "-1,2,3,1"])
def test_check_rejects_bad_shapes(shape, capsys):
    with pytest.raises(SystemExit) as e:
        main(["check", f"--shape={shape}"])
    assert e.value.code == 2
    assert "expected N,d_in,d_sae,k" in capsys.readouterr().err


def test_unknown_command_exits_2():
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
