"""The feature MLP: a learned optimizer built to carry over to problems it was never trained on.

Where the paper's LSTM reads each gradient through log/sign preprocessing, this one reads features that
are relative to Adam's moment estimates, as RNNprop (Lv, Jiang & Li, 2017) does, at several momentum
timescales, as Wichrowska et al. (2017) and the small per-parameter MLPs of Metz et al. (2022) do:

    r     = 1 / sqrt(v̂)                                   (v̂: the bias-corrected mean of g², β2 = 0.999)
    x     = clip([g·r, m̂_0.5·r, m̂_0.9·r, m̂_0.99·r], ±10) and three time features 2·(1 − β^t) − 1
    d, a  = MLP(x)                                         (ReLU hidden layers, two outputs)
    Δ     = −η · exp(3.5·tanh a) · (m̂_0.9·r + 3·tanh(d/3))

With `warmup`, the step-size factor at step t is at most exp(3.5·(1 − 0.9^t)): 1.4 at the first step, 5 by the
fifth, the full e^3.5 after about 40. On the mixture's validation draws the rule's first update, about ten
times Adam's, put the loss above its initial value on 4 of 8 problems; β = 0.9 is the momentum the
direction averages over, so the cap lifts as that average fills.

Every input is invariant to the gradient's scale, so a loss scaled by any factor gets the same updates.
With the output layer at zero the rule is Adam at step η (β1 = 0.9): meta-training starts from a working
hand-designed optimizer and learns a bounded correction of its direction (±3) and of its step size
(a factor between e^-3.5 and e^3.5), so the learned rule stays as stable as the features it builds on
(Harrison et al., 2022). The state holds no recurrent activations, only the moments: 8 floats per
coordinate (32 bytes in float32), against the LSTM's 80.

State per coordinate, in this order: m_0.5, m_0.9, m_0.99, sqrt(v), and the bias accumulators 1 − β^t for
β = 0.5, 0.9, 0.99, 0.999, kept per coordinate (they are the same for all) so that a slice of coordinates
carries everything its step needs. sqrt(v) rather than v keeps float16 states clear of overflow and
underflow for gradients up to float16's own range.

With `step_memory`, the rule also carries a log step size s per coordinate, as delta-bar-delta and Rprop
carry a per-coordinate learning rate, and as Adam's features cannot: every input above is scale-free and
instantaneous, so no feature tells the rule that a coordinate has taken safe steps for a long time. A
third output moves it, s ← clip(s + 0.1·tanh(·), ±3), the MLP reads s/3 as an eighth feature, and the
step-size factor becomes exp(3.5·tanh a + s): up to e^6.5 over the base step. s starts at 0 and, with the
output layer at zero, stays there, so the rule still starts as Adam. 9 floats per coordinate.

With `relative_correction`, the direction's correction is scaled by |m̂_0.99|·r, at most 1: the gradient's
mean over about 100 steps against its root mean square, a signal-to-noise ratio. Near a minimum, where the
gradient is mostly noise, Adam's own direction shrinks and the correction now shrinks with it; added as it
was, ±3 whatever the signal, it kept the rule's late steps large (recipe v7's diagnosis in the README).

With `correction_warmup`, the direction's correction is also scaled by 1 − 0.9^t, the share of the momentum
average that has filled: 0.1 at the first step, 0.65 by the tenth, 0.99 after 44. At the first steps every
feature is ±1 whatever the problem (m̂·r = g·r = sign g), so the correction there is one constant for all
problems; at up to 3 times Adam's direction it put the loss above its initial value at steps 1–3 on 2 of
16 validation runs (recipe v9 seed 1), and scaled this way on none. On the held-out suite it did not help,
and the shipped checkpoint runs without it (the README's section on the correction's warm-up).

With `memory_up_only` (with `step_memory`), the memory is held in [0, 3]: it can raise the step, not lower
it. Recipe v9's memory fell at its full rate in every coordinate to −3 by step 30 on the validation draws,
a schedule rather than a per-coordinate rate, while late in the run the step-size output sat at its top
(+3.0 to +3.5) against it: the step ended near the base step whatever the problem.
"""

from __future__ import annotations

import math

import torch

BETA1S = (0.5, 0.9, 0.99)
BETA2 = 0.999
N_STATE = 8
N_FEATURES = 7
N_OUTPUTS = 2
FEATURE_CLIP = 10.0
DIRECTION_RANGE = 3.0
MAGNITUDE_RANGE = 3.5
MEMORY_RANGE = 3.0
MEMORY_RATE = 0.1
# Keeps 1/sqrt(v̂) finite for a coordinate whose gradients have all been exactly zero (its update is then 0).
TINY = 1e-30
_BETAS = torch.tensor([*BETA1S, BETA2])


def sizes(memory: bool = False) -> tuple[int, int, int]:
    """(state floats, features, outputs) per coordinate, with or without the step memory."""
    return N_STATE + memory, N_FEATURES + memory, N_OUTPUTS + memory


def weight_shapes(hidden: int, layers: int, memory: bool = False) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    _, fan_in, outputs = sizes(memory)
    for layer in range(layers):
        shapes[f"mlp.{layer}.weight"] = (hidden, fan_in)
        shapes[f"mlp.{layer}.bias"] = (hidden,)
        fan_in = hidden
    shapes["head.weight"] = (outputs, hidden)
    shapes["head.bias"] = (outputs,)
    return shapes


def init_weights(hidden: int, layers: int, generator: torch.Generator | None = None,
                 memory: bool = False) -> dict[str, torch.Tensor]:
    """torch's default uniform init for the hidden layers; a zero output layer, so the rule starts as Adam."""
    weights = {}
    shapes = weight_shapes(hidden, layers, memory)
    for name, shape in shapes.items():
        if name.startswith("head."):
            weights[name] = torch.zeros(shape)
            continue
        fan_in = shape[1] if name.endswith("weight") else shapes[name[:-4] + "weight"][1]
        bound = 1.0 / math.sqrt(fan_in)
        weights[name] = torch.empty(shape).uniform_(-bound, bound, generator=generator)
    return weights


def inputs(grads: torch.Tensor, state: torch.Tensor, time_horizon: int | None = None,
           dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(the MLP's features (N, 7), or (N, 8) with the step memory, Adam's direction m̂_0.9·r (N,), the new
    moments and accumulators (N, 8) in `dtype`).

    `time_horizon`, the longest run meta-training showed the rule: past that step the time features stay at
    their value there, so a long run meets no time feature it was never trained on. The bias corrections
    keep counting.
    """
    g = grads.to(dtype)
    s = state.to(dtype)
    betas = _BETAS.to(g.device, dtype)
    m = s[:, 0:3] * betas[:3] + g.unsqueeze(1) * (1 - betas[:3])
    v = s[:, 3] ** 2 * BETA2 + g * g * (1 - BETA2)
    acc = s[:, 4:8] * betas + (1 - betas)
    r = torch.rsqrt(v / acc[:, 3] + TINY)
    m_hat_r = m / acc[:, :3] * r.unsqueeze(1)
    relative = torch.cat([(g * r).unsqueeze(1), m_hat_r], dim=1).clamp(-FEATURE_CLIP, FEATURE_CLIP)
    elapsed = acc[:, 1:]
    if time_horizon is not None:
        elapsed = torch.minimum(elapsed, 1 - betas[1:] ** time_horizon)
    parts = [relative, 2 * elapsed - 1]
    if s.shape[1] > N_STATE:
        parts.append(s[:, N_STATE:] / MEMORY_RANGE)
    return torch.cat(parts, dim=1), m_hat_r[:, 1], torch.cat([m, v.sqrt().unsqueeze(1), acc], dim=1)


def step(weights: dict[str, torch.Tensor], grads: torch.Tensor, state: torch.Tensor, base_step: float,
         layers: int, time_horizon: int | None = None, warmup: bool = False,
         relative_correction: bool = False, correction_warmup: bool = False,
         memory_up_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(updates (N,), new state (N, 8), or (N, 9) with the step memory) for flat grads (N,); computes in
    float32 (float64 with float64 weights, for gradient checks), returns the state in its dtype.
    `time_horizon`: see `inputs`; `warmup`, `relative_correction`, `correction_warmup`, `memory_up_only`: see
    the module's docstring. The state's width says whether the rule carries a step memory (the weights must agree:
    `weight_shapes`).

    Differentiable with respect to `weights` (meta-training); under no_grad it is the inference step.
    """
    dtype = torch.promote_types(torch.float32, weights["head.weight"].dtype)
    features, adam_direction, new_state = inputs(grads, state, time_horizon, dtype)
    h = features
    for layer in range(layers):
        h = torch.relu(torch.addmm(weights[f"mlp.{layer}.bias"], h, weights[f"mlp.{layer}.weight"].t()))
    out = torch.addmm(weights["head.bias"], h, weights["head.weight"].t())
    correction = DIRECTION_RANGE * torch.tanh(out[:, 0] / DIRECTION_RANGE)
    if relative_correction:
        correction = correction * features[:, 3].abs().clamp(max=1.0)   # |m̂_0.99|·r, within the features' clip
    filled = new_state[:, 5]   # 1 − 0.9^t: the share of the β = 0.9 momentum average that has filled
    if correction_warmup:
        correction = correction * filled
    direction = adam_direction + correction
    magnitude = MAGNITUDE_RANGE * torch.tanh(out[:, 1])
    if warmup:
        magnitude = torch.minimum(magnitude, MAGNITUDE_RANGE * filled)
    if state.shape[1] > N_STATE:
        # The memory moves by at most MEMORY_RATE a step: it is its own warm-up.
        memory = (state[:, N_STATE].to(dtype) + MEMORY_RATE * torch.tanh(out[:, 2])).clamp(
            0.0 if memory_up_only else -MEMORY_RANGE, MEMORY_RANGE)
        magnitude = magnitude + memory
        new_state = torch.cat([new_state, memory.unsqueeze(1)], dim=1)
    updates = -base_step * torch.exp(magnitude) * direction
    return updates, new_state.to(state.dtype)
