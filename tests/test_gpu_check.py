"""python -m minieq.bench.gpu_check at its tiny size on the CPU: every row, one table."""
import pytest

from minieq.bench import gpu_check


def test_tiny_check_prints_one_table_with_every_row(capsys):
    assert gpu_check.main(["--tiny", "--device", "cpu", "--steps", "1", "--tokens", "4",
                           "--parts", "train", "sample", "--parity_dir", "absent"]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| check | fp32 | bf16 | note |"
    names = [row.split(" | ")[0][2:] for row in rows[1:]]
    assert names == ["train tokenizer fast (batch 2)", "train generator fast (batch 4)",
                     "sample tiny, Euler-5, KV cache", "sample tiny, Euler-5, recompute",
                     "sample tiny, midpoint-5, KV cache"]
    for row in rows[1:3]:  # step times, hours scaled to the preset's batch, the estimate beside
        fp32, bf16, note = row.split(" | ")[1:4]
        assert float(fp32.split(" ms/step")[0]) > 0 and float(bf16.split(" ms/step")[0]) > 0
        assert "A100-h (minieq.estimate)" in note and "hours scaled" in note


def test_parity_rows_meet_the_fp32_bounds(parity_dir):
    rows = gpu_check.parity_rows(parity_dir, gpu_check.pick_device("cpu"))
    assert len(rows) == 6
    for name, fp32, bf16, _ in rows:
        assert float(fp32) < 1e-4, name  # the parity tests' bounds, on this device
        assert float(fp32) < float(bf16) < 0.2, name  # bf16 ran, and stays near the golden output


def test_missing_fixtures_are_one_row_and_bad_flags_one_error(tmp_path, capsys):
    assert gpu_check.parity_rows(tmp_path, gpu_check.pick_device("cpu"))[0][3].startswith("fixtures not found")
    with pytest.raises(SystemExit) as err:
        gpu_check.main(["--tiny", "--steps", "0"])
    assert err.value.code == 2 and "--steps must be >= 1" in capsys.readouterr().err
