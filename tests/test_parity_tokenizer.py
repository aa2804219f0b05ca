"""Parity with the official tokenizer: the golden checkpoint must reproduce the golden IO."""
import json
import os
from pathlib import Path

import pytest
import torch

from minieq import CheckpointError, load_official_tokenizer
from minieq.checkpoint import safe_torch_load

GOLDEN = Path(os.environ.get("MINIEQ_PARITY_DIR", Path(__file__).resolve().parents[2] / "shared" / "golden"))
CKPT, IO, CONFIG = (GOLDEN / n for n in ("public_tokenizer.ckpt", "public_tokenizer_io.pt",
                                         "public_config.json"))
pytestmark = pytest.mark.skipif(
    not all(p.is_file() for p in (CKPT, IO, CONFIG)),
    reason=f"official parity fixtures not found in {GOLDEN} (set MINIEQ_PARITY_DIR)")
TOL = 1e-4  # max |ours - official| / max |official|


def rel_err(ours, ref):
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.fixture(scope="module")
def official_params():
    return json.loads(CONFIG.read_text())["tokenizer"]


@pytest.fixture(scope="module")
def io():
    return safe_torch_load(IO)


@pytest.fixture(scope="module")
def tok(official_params):
    return load_official_tokenizer(CKPT, official_params)


@torch.no_grad()
@pytest.mark.parametrize("width", [64, 48])
def test_encode_and_decode_match_official(tok, io, width):
    tokens = tok.encode(io[f"images_w{width}"])
    assert tokens.shape == io[f"tokens_w{width}"].shape
    assert rel_err(tokens, io[f"tokens_w{width}"]) < TOL
    recon = tok.decode(io[f"tokens_w{width}"])
    assert rel_err(recon, io[f"recon_w{width}"]) < TOL


@torch.no_grad()
def test_long_decode_matches_official(tok, io):
    decoded = tok.decode(io["long_tokens"])  # 10 tokens: more than were ever encoded
    assert decoded.shape == (1, 3, 256, 160)
    assert rel_err(decoded, io["long_decoded"]) < TOL


@torch.no_grad()
def test_loader_uses_the_ema_weights(tok, io, official_params):
    state = safe_torch_load(CKPT)["state_dict"]
    assert not torch.equal(state["encoder.conv_in.weight"], state["ema_encoder.conv_inweight"])
    assert torch.equal(tok.encoder.conv_in.weight, state["ema_encoder.conv_inweight"])
    live = load_official_tokenizer({"state_dict": state}, official_params, use_ema=False)
    assert rel_err(live.decode(io["long_tokens"]), io["long_decoded"]) > 100 * TOL


def test_missing_key_is_reported(official_params):
    state = dict(safe_torch_load(CKPT)["state_dict"])
    del state["ema_decoder.conv_outweight"], state["decoder.conv_out.weight"]
    with pytest.raises(CheckpointError, match="decoder.conv_out.weight"):
        load_official_tokenizer({"state_dict": state}, official_params)


def test_unexpected_key_is_reported(official_params):
    state = dict(safe_torch_load(CKPT)["state_dict"])
    state["encoder.extra.weight"] = torch.zeros(1)
    state["loss.discriminator.heads.0.weight"] = torch.zeros(1)  # ignorable: training-only
    with pytest.raises(CheckpointError, match=r"unexpected \(1\).*encoder.extra.weight"):
        load_official_tokenizer({"state_dict": state}, official_params)


def test_wrong_config_is_reported(official_params):
    # 16-channel tokens do not fit the golden 8-channel quant layers: the shapes are listed.
    with pytest.raises(CheckpointError, match=r"wrong shape \(3\).*quant_layer.weight"):
        load_official_tokenizer(CKPT, {**official_params, "embed_dim": 16})
