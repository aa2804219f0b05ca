"""The head-speed benchmarks run end to end at the tiny preset (values, not timings)."""
from minieq.bench import end_to_end, head_profile
from minieq.head_inference import FORMS


def test_profile_groups_every_form_and_counts_the_bytes_each_reads():
    results = head_profile.main(["--preset", "tiny", "--rows", "2", "--repeats", "1", "--solver", "midpoint:1"])
    forms = results[2]
    assert set(forms) == set(FORMS)
    for r in forms.values():
        assert r["seconds"] > 0 and "LayerNorm" in r["ops"]
    assert "matmul: adaLN modulations" in forms["plain"]["ops"] and "matmul: block MLPs" in forms["fp32"]["ops"]
    # The packed forms read the modulation weights once per token, bf16 MLP weights are half size.
    assert forms["plain"]["weight_bytes"] > forms["fp32"]["weight_bytes"] > forms["bf16"]["weight_bytes"]


def test_end_to_end_tables_per_batch_with_solver_and_few_step_modes():
    tables = end_to_end.main(["--preset", "tiny", "--strip", "8", "--strip_tokens", "1", "--image_tokens", "2",
                              "--batch", "1", "2", "--fast", "midpoint:2", "distilled:2:1", "--forms", "fp32", "bf16"])
    assert set(tables) == {1, 2}
    for rows in tables.values():
        names = list(rows)
        assert names[0].startswith("(a) official") and names[1].startswith("(b) default")
        assert len(names) == 2 + 2 * 2  # two --fast settings in two forms
        calls = [r["head_calls"] for r in rows.values()]
        assert calls == [100, 100, 4, 4, 1, 1]  # distilled-2->1: a full-window token runs 1 call
        assert all(r["image_seconds"] > 0 and r["strip_seconds"] > 0 for r in rows.values())
