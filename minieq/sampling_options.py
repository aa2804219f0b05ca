"""How to sample a token: the solvers and their cost in head calls, and :class:`SamplingOptions`,
the settings one sampling call carries from ``Pipeline.generate`` down to ``FlowHead.sample``.

The solvers themselves are in :mod:`minieq.flow` (``integrate``) and :mod:`minieq.few_step`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# Every solver integrates from t = 1 to 0 on the uniform grid t_i = i/N (N = steps):
# "euler"    official: z <- z - v(z, t_i)/N                                       N calls, order 1
# "heun"     trapezoid: predict with Euler to t_{i-1}, average both slopes        2N calls, order 2
# "midpoint" slope at the midpoint t_i - 1/(2N) after half an Euler step          2N calls, order 2
# Midpoint has the lowest error per head call on the course generator at cfg 1 and 3
# (docs/sampling_speed.md); 2-step Adams-Bashforth (N calls) was measured too and dropped: midpoint
# beat it at every cost.
SOLVERS = ("euler", "heun", "midpoint")
# "distilled": a few-step head (minieq.few_step) trained to jump along the teacher's guided ODE:
# z <- z - u(z, t_i, d = 1/N, s)/N, one call per step, N in 1..4. It is not an ODE solver of this
# head's velocity, so it needs a FewStepNet attached to the head (FlowHead.few_step).
DISTILLED = "distilled"
SAMPLERS = SOLVERS + (DISTILLED,)
_CALLS_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2, DISTILLED: 1}


# How the guidance scale ramps over the tokens of a sample (``generator_sampling.cfg_scale``).
CFG_SCHEDULES = ("linear", "constant")


def check_solver(solver: str) -> None:
    """Raise a one-line ValueError for a solver name not in :data:`SAMPLERS`."""
    if solver not in SAMPLERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {SAMPLERS}")


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample, checked once and passed whole from ``Pipeline.generate`` through
    ``Generator.sample`` and the token loop down to :meth:`FlowHead.sample`.

    :param solver: the flow head's ODE solver, one of :data:`SOLVERS` (``"euler"`` = official), or
        ``"distilled"`` (an attached few-step head, :mod:`minieq.few_step`).
    :param steps: solver steps per token; None = the generator config's ``num_sampling_steps``
        (for ``"distilled"``: the fewest steps the few-step head was trained for).
    :param late_steps: steps annealed along the sequence: None keeps ``steps`` for every token;
        an integer ramps token k's steps linearly from ``steps`` (token 0, no context) to
        ``late_steps`` at the first token whose attention window is full (token ``cond_length``)
        and keeps it there. The token loop reads it; the head sees one token's steps.
    :param cfg: classifier-free guidance scale s (1.0 = no guidance).
    :param cfg_schedule: one of :data:`CFG_SCHEDULES`, how s ramps over the tokens: ``"linear"``
        (official) or ``"constant"``. The token loop reads it; the head sees one token's scale.
    :param temperature: multiplies the initial flow noise (1.0 = official; 0 = no noise).
    """

    solver: str = "euler"
    steps: int | None = None
    late_steps: int | None = None
    cfg: float = 1.0
    cfg_schedule: str = "linear"
    temperature: float = 1.0

    def __post_init__(self):
        check_solver(self.solver)
        for name in ("steps", "late_steps"):
            steps = getattr(self, name)
            if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None, got {steps!r}")
        if self.late_steps is not None and self.steps is None:
            raise ValueError("late_steps anneals from steps: give steps too")
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule must be 'linear' or 'constant', got {self.cfg_schedule!r}")
        _check_scale("cfg", self.cfg, "1.0 = no guidance")
        _check_scale("temperature", self.temperature, "1.0 = the official sampler, < 1 less diverse")

    @classmethod
    def from_call(cls, options: SamplingOptions | None, **keywords) -> SamplingOptions:
        """The options of a sampling call: ``options`` when given, else built from the call's
        keywords (solver, steps, late_steps, cfg, cfg_schedule, temperature).

        Giving ``options`` together with a keyword that differs from its default is refused:
        which of the two should win is not obvious to a reader of the call.
        """
        if options is None:
            return cls(**keywords)
        if not isinstance(options, cls):
            raise TypeError(f"options must be a minieq.flow.SamplingOptions, got {type(options).__name__}")
        default = cls()
        both = [name for name, value in keywords.items() if value != getattr(default, name)]
        if both:
            raise ValueError(f"got options= and {', '.join(both)}=; put every setting in the options "
                             f"(dataclasses.replace(options, {both[0]}=...)) or leave options out")
        return options


def _check_scale(name: str, value, meaning: str) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError, RuntimeError):  # not a number, or a tensor of several
        number = math.nan
    if not (math.isfinite(number) and number >= 0):  # NaN would give NaN tokens silently
        raise ValueError(f"{name} must be a finite number >= 0 ({meaning}), got {value!r}")


def head_calls(solver: str, steps: int) -> int:
    """Velocity evaluations per token of ``solver`` with ``steps`` steps (guidance doubles the
    rows of each call, not the number of calls)."""
    check_solver(solver)
    return _CALLS_PER_STEP[solver] * steps
