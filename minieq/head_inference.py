"""The flow head's sampling form: its AdaLN MLP repacked for the ODE loop (issue 24).

Shape legend: T evaluation times of one token's solve, R rows of a head call (M, or 2M with
guidance), C token channels, W head width, K = 3·depth + 2 modulation vectors per row.

Sampling calls the head's velocity network (:class:`minieq.flow.AdaLNMLP`) 10-100 times per token
on a few rows, so each call streams all its weights from memory for a few FLOPs per byte. Six
tenths of those bytes are work that does not depend on the state z:
* every AdaLN modulation (3 vectors per block, 2 for the final layer; 60 % of the weights) reads
  only y = t_emb(t) + y_cond, and both parts are known before the solve starts: y_cond is fixed per
  token and the solver's times are fixed per (solver, steps);
* the time MLP (2 %) reads only t.
:class:`PackedHead` fuses the modulation Linears into one (W -> K·W) and computes all of a solve's
modulations at once, on T·R rows (:meth:`PackedHead.modulations`), so their weights stream once per
token instead of once per call; each call then runs only the input projection, the blocks' MLPs,
LayerNorms and the output layer. SiLU is not linear, so the modulations cannot be split into a
t part and a y_cond part: they are computed from y itself, for every (time, row).

Forms (``FlowHead.sampling_form``, :data:`FORMS`):
* ``"plain"``: the training modules, one full network call per step (the official computation);
* ``"fp32"`` (default): :class:`PackedHead` in float32, the same velocity to float round-off;
* ``"bf16"``: the blocks' MLP matmuls (98 % of a call's weights at the S preset) in bfloat16,
  accumulating in float32; everything else in float32. Half the bytes per call, and CPUs with
  AVX-512 BF16 multiply bf16 at about twice the fp32 rate. Opt-in: it adds a token error
  (docs/sampling_speed.md), where the fp32 forms agree to round-off.

A packed head is a copy of the weights at one moment, kept per net (:func:`packed`) and rebuilt
when any parameter of the net was replaced (its storage moved) or modified in place (autograd's
version counter, which optimizers, ``load_state_dict`` and ``EMA.copy_to`` all bump). A write
through ``param.data`` bypasses the counter: call :func:`forget` after one. Training and
``FlowHead.loss`` never see the packed form: they call the modules.
"""
from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # minieq.flow imports this module to sample
    from minieq.flow import AdaLNMLP

FORMS = ("plain", "fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# Rows of one modulation matmul (T·R): beyond ~64 rows it is compute-bound, so larger blocks only
# cost memory (K·W floats per row, 140 KiB at the S preset).
BLOCK_ROWS = 128


# Weights of at least this many elements are prepacked for oneDNN on a CPU; below it the fixed
# cost of a oneDNN call outweighs the gain (break-even measured near 360 x 360).
ONEDNN_MIN_ELEMENTS = 2**17


def prepack(weight: torch.Tensor) -> torch.Tensor:
    """weight (out, in) as :func:`linear` runs it fastest: on a CPU, for a large weight, reordered
    once into oneDNN's blocked layout (an mkldnn tensor), else as it is.

    Why: at a few rows a call is one pass over each weight, and PyTorch's CPU fp32 matmul (MKL)
    runs that well below the memory bandwidth (on AMD CPUs it also takes its AVX2 path); oneDNN
    with a prepacked weight ran the S head's layers 2.5x faster in fp32 and 4.8x in bf16
    (docs/sampling_speed.md). The two ops are the ones PyTorch's compiler (inductor) uses for
    this; a build without them gets F.linear."""
    if weight.device.type != "cpu" or weight.numel() < ONEDNN_MIN_ELEMENTS or not torch.backends.mkldnn.is_available():
        return weight
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight)
    except (AttributeError, RuntimeError, NotImplementedError):  # a build without the op
        return weight


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x (N, in) @ weight.T + bias -> (N, out) for a weight made by :func:`prepack`."""
    if weight.is_mkldnn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class PackedHead:
    """The sampling form of an :class:`AdaLNMLP` (or a ``FewStepNet``, which adds to y_cond only).

    :param net: the velocity network; its weights are read once, here.
    :param mlp_dtype: the blocks' MLP matmuls: torch.float32 (the same velocity as ``net``) or
        torch.bfloat16 (their weights and inputs in bf16, accumulated in fp32). Everything else
        stays fp32: the modulations run once per token, and the input and output projections
        touch z and v directly (in bf16 they doubled the bf16 error, for 2 % of the bytes).
    """

    def __init__(self, net: AdaLNMLP, mlp_dtype: torch.dtype = torch.float32):
        self.mlp_dtype = mlp_dtype
        self.width, self.channels = net.input_proj.out_features, net.input_proj.in_features
        self.time_embed = net.time_embed  # the module: it runs once per token, on T rows
        mods = [block.adaLN_modulation[1] for block in net.res_blocks] + [net.final_layer.adaLN_modulation[1]]
        bias = torch.cat([m.bias.detach().float() for m in mods])  # (K·W,), a new tensor
        # modulate() multiplies by (1 + scale): fold the 1 into the scale biases once.
        W = self.width
        for i in range(len(net.res_blocks)):
            bias[(3 * i + 1) * W:(3 * i + 2) * W] += 1  # block i: (shift, scale, gate)
        bias[-W:] += 1  # final layer: (shift, scale)
        self.mod_weight, self.mod_bias = _weight(torch.cat([m.weight.detach() for m in mods])), bias  # (K·W, W)
        self.input_proj = _linear_of(net.input_proj)
        self.blocks = [(block.in_ln.weight.detach().float(), block.in_ln.bias.detach().float(),
                        *_linear_of(block.mlp[0], mlp_dtype), *_linear_of(block.mlp[2], mlp_dtype))
                       for block in net.res_blocks]
        self.output = _linear_of(net.final_layer.linear)

    @torch.no_grad()
    def modulations(self, times: Sequence[float], y_cond: torch.Tensor) -> torch.Tensor:
        """Every AdaLN modulation of the calls at ``times`` for rows with condition half ``y_cond``.

        :param times: T flow times.
        :param y_cond: (R, W) the per-token half of AdaLN's y (``cond_embed`` of the rows).
        :return: (T, R, K, W): for time j, ``[j].unbind(1)`` gives block i's (shift, 1 + scale, gate)
            at 3i .. 3i+2 and the final layer's (shift, 1 + scale) last, each (R, W).
        """
        t = torch.tensor(times, dtype=torch.float32, device=y_cond.device)  # (T,)
        y = self.time_embed(t)[:, None] + y_cond[None]  # (T, R, W): AdaLN's y of each call's rows
        T, R, W = y.shape
        mods = linear(F.silu(y).view(T * R, W).float(), self.mod_weight, self.mod_bias)  # (T·R, K·W)
        return mods.view(T, R, -1, W)  # (T, R, K, W)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, mods: torch.Tensor) -> torch.Tensor:
        """The velocity of rows x (R, C) with their modulations ``mods`` (R, K, W) -> (R, C)."""
        mods = mods.unbind(1)  # K tensors (R, W), strided views: one op instead of K index ops
        x = linear(x.float(), *self.input_proj).float()  # (R, W), the residual stream (fp32 under autocast too)
        for i, (ln_w, ln_b, w1, b1, w2, b2) in enumerate(self.blocks):
            shift, scale, gate = mods[3 * i:3 * i + 3]
            h = torch.addcmul(shift, F.layer_norm(x, (self.width,), ln_w, ln_b, 1e-6), scale)
            h = linear(F.silu(linear(h.to(self.mlp_dtype), w1, b1)), w2, b2)  # (R, W)
            x.addcmul_(gate, h)  # x + gate·MLP(...), the block's residual update (in fp32)
        h = torch.addcmul(mods[-2], F.layer_norm(x, (self.width,), eps=1e-6), mods[-1])
        return linear(h, *self.output).float()  # (R, C)


def _weight(weight: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return prepack(weight.detach().to(dtype).contiguous())  # without oneDNN, fp32: the module's own tensor


def _linear_of(layer: torch.nn.Linear, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    return _weight(layer.weight, dtype), layer.bias.detach().to(dtype)


# net -> {form: (parameter key, PackedHead, the parameters it was built from)}. Weak keys: the
# entries go with their net, and nothing is added to the module (its pickles and copies stay as they were).
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def packed(net: AdaLNMLP, form: str) -> PackedHead:
    """The :class:`PackedHead` of ``net`` in ``form`` ("fp32" or "bf16"), built again whenever a
    parameter of ``net`` is not the tensor it was built from (other storage or version).

    The cache entry keeps the tensors it was built from alive, so a new parameter cannot reuse a
    freed address and look unchanged."""
    key = tuple((p.data_ptr(), p._version, p.device) for p in net.parameters())
    entries = _CACHE.setdefault(net, {})
    if form not in entries or entries[form][0] != key:
        kept = [p.detach() for p in net.parameters()]  # views: their storage stays while the entry does
        entries[form] = (key, PackedHead(net, _DTYPES[form]), kept)
    return entries[form][1]


def forget(net: AdaLNMLP) -> None:
    """Drop ``net``'s packed forms (needed only after a weight write through ``param.data``)."""
    _CACHE.pop(net, None)


def evaluation_times(solver: str, steps: int) -> list[float]:
    """The t of each velocity call that ``flow.integrate(velocity, z, solver, steps)`` makes, in
    order and computed by the same expressions, so the floats match the calls' bit for bit
    ("distilled" samples with Euler's grid)."""
    ends = {"euler": (), "distilled": (), "heun": (1.0,), "midpoint": (0.5,)}[solver]  # 2nd call: (i - end)/N
    return [t for i in range(steps, 0, -1) for t in (i / steps, *((i - e) / steps for e in ends))]


class PackedVelocity:
    """One token's guided velocity v(z, t) from a :class:`PackedHead` (``flow.GuidedVelocity``'s twin).

    The modulations of the solve's ``times`` are computed in blocks of about :data:`BLOCK_ROWS`
    rows, each when its first time is called; a time outside ``times`` gets its own block.
    """

    def __init__(self, head: PackedHead, y_cond: torch.Tensor, guided: bool, cfg, times: Sequence[float]):
        self.head, self.y_cond, self.guided, self.cfg = head, y_cond, guided, cfg  # y_cond (R, W)
        self.times = list(dict.fromkeys(times))  # in call order, each time once (Heun reuses its ends)
        self.position = {t: i for i, t in enumerate(self.times)}
        self.block_size = max(1, BLOCK_ROWS // y_cond.shape[0])
        self.block: dict[float, torch.Tensor] = {}
        self.x = torch.empty(y_cond.shape[0], head.channels, device=y_cond.device)  # (R, C)

    def _modulations(self, t: float) -> torch.Tensor:
        if t not in self.block:
            i = self.position.get(t)
            times = [t] if i is None else self.times[i:i + self.block_size]
            self.block = dict(zip(times, self.head.modulations(times, self.y_cond)))  # each (R, K, W)
        return self.block[t]

    def __call__(self, z: torch.Tensor, t: float) -> torch.Tensor:
        mods = self._modulations(t)
        if not self.guided:
            return self.head(z, mods)
        torch.cat([z, z], out=self.x)  # both halves integrate the same z (shared noise, as official)
        v_c, v_u = self.head(self.x, mods).chunk(2)
        return v_u + self.cfg * (v_c - v_u)
