"""minieq: a compact re-implementation of Equivariant Image Modeling (Dong et al., 2025).

The public API (see the README and docs/architecture.md) is re-exported here.
"""
from minieq.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from minieq.utils import autocast, count_parameters, pick_device, seed_everything

# --- data (data.py) ---
from minieq.data import (SYNTHSCAPES_CLASSES, LatentDataset, SynthScapes, check_image_size, imagenet, lhq,
                         places30, render_synthscapes)
# --- tokenizer (tokenizer.py, official_tokenizer.py, losses.py, metrics.py) ---
from minieq.official_tokenizer import load_official_tokenizer
from minieq.tokenizer import ColumnTokenizer, TokenizerConfig, TokenizerOutput, sigma_vae_sample
from minieq.losses import TokenizerLoss, TokenizerLossConfig
from minieq.metrics import psnr, ssim
# --- generator (generator.py, flow.py, attention.py, official_generator.py) ---
from minieq.generator import Generator, GeneratorConfig
from minieq.official_generator import load_official_generator
# --- pipeline (pipeline.py; the generator's training length and latent scale: generator_data.py) ---
from minieq.pipeline import Pipeline
from minieq.generator_data import TRAIN_TOKENS, compute_latent_scale

__version__ = "0.1.0"
