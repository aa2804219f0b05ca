"""minieq: a compact re-implementation of Equivariant Image Modeling (Dong et al., 2025).

The public API (see the README and docs/architecture.md) is re-exported here.
"""
from minieq.checkpoint import CheckpointError, load_checkpoint, read_checkpoint, save_checkpoint
from minieq.utils import autocast, count_parameters, pick_device, seed_everything

# --- data (data.py) ---
# --- tokenizer (tokenizer.py, official.py) ---
# --- generator (generator.py, flow.py, attention.py) ---
# --- pipeline (pipeline.py) ---

__version__ = "0.1.0"
