"""The differentiable step with a hand-written backward: what meta-training runs at every optimizee step.

Same math as `step_autograd` (to float32 tolerance), laid out for speed on the CPU, where profiling a
meta-training unroll showed the elementwise work and fresh memory, not the matrix products, to dominate:

- coordinates run along the last, contiguous axis: the state is kept as (L, 2, H, N) and the gates as
  (4H, N), so every gate, h and c is a contiguous block and each elementwise op is one flat vectorised
  loop (on the (N, 4H) layout each op loops over rows of 20 strided floats, several times slower);
- all four gates go through one in-place sigmoid, with tanh taken as 2·σ(2x) − 1 (the g rows of the
  weights are doubled, an exact scaling): on one thread torch's tanh ran about 6 times slower than its
  sigmoid;
- the new state and the state's gradient are written straight into their blocks, with no select/stack
  bookkeeping (autograd's backward of a select zero-fills a full-size tensor);
- the backward pass keeps only each layer's input, gate activations and tanh of its new cell, and
  forms all four gate gradients in one (4H, N) matrix for two matrix products.

`step_fused` takes and returns the usual (N, L, 2, H) state; meta-training keeps the transposed state
through a whole unroll (`to_columns` / `from_columns` at its ends) and calls `step_columns`.
"""

from __future__ import annotations

import torch

from service.lopt.config import OptimizerConfig
from service.lopt.preprocess import preprocess
from service.lopt.state import LSTMState


def _tanh_(x: torch.Tensor) -> torch.Tensor:
    """tanh(x) = 2·σ(2x) − 1, overwriting x."""
    return torch.sigmoid_(x.mul_(2.0)).mul_(2.0).sub_(1.0)


def _gate_scale(hidden: int, like: torch.Tensor) -> torch.Tensor:
    """1 for the i, f and o rows, 2 for g: σ of the scaled gates gives σ(i), σ(f), σ(2g), σ(o)."""
    scale = torch.ones(4 * hidden, 1, dtype=like.dtype, device=like.device)
    scale[2 * hidden: 3 * hidden] = 2.0
    return scale


class _FusedStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, hc: torch.Tensor, output_scale: float,  # type: ignore[override]
                *weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (inputs, N); hc: (L, 2, H, N)
        layers, _, hidden, _ = hc.shape
        scale = _gate_scale(hidden, hc)
        new_hc = torch.empty_like(hc)
        saved: list[torch.Tensor] = []
        inp = x
        for layer in range(layers):
            w, b = weights[2 * layer], weights[2 * layer + 1]
            z = torch.cat([inp, hc[layer, 0]], dim=0)
            act = torch.sigmoid_(torch.addmm(b.unsqueeze(1) * scale, w * scale, z))
            i, f, g, o = act.chunk(4, dim=0)
            g.mul_(2.0).sub_(1.0)  # act holds σ(i), σ(f), tanh(g), σ(o)
            c_new = torch.addcmul(f * hc[layer, 1], i, g, out=new_hc[layer, 1])
            tc = _tanh_(c_new.clone())
            inp = torch.mul(o, tc, out=new_hc[layer, 0])
            saved += [z, act, tc]
        head_w, head_b = weights[-2], weights[-1]
        updates = torch.addmm(head_b.unsqueeze(1), head_w, inp).squeeze(0).mul_(output_scale)
        ctx.output_scale = output_scale
        ctx.save_for_backward(hc, new_hc, *weights, *saved)
        return updates, new_hc

    @staticmethod
    def backward(ctx, d_updates: torch.Tensor, d_new_hc: torch.Tensor):  # type: ignore[override]
        hc, new_hc, *rest = ctx.saved_tensors
        layers, _, hidden, _ = hc.shape
        n_weights = 2 * layers + 2
        weights, saved = rest[:n_weights], rest[n_weights:]
        d_weights: list[torch.Tensor | None] = [None] * n_weights
        d_out = (d_updates * ctx.output_scale).unsqueeze(0)  # (1, N)
        d_weights[-2] = d_out.mm(new_hc[layers - 1, 0].t())
        d_weights[-1] = d_out.sum(1)
        d_h = weights[-2].t().mm(d_out)  # (H, N): into the top layer's new h
        d_hc = torch.empty_like(hc)
        d_x = None
        for layer in reversed(range(layers)):
            z, act, tc = saved[3 * layer: 3 * layer + 3]
            i, f, g, o = act.chunk(4, dim=0)
            d_h = d_h.add_(d_new_hc[layer, 0])
            # c_new feeds h_new through tanh and the next step's state directly.
            d_c = torch.addcmul(d_new_hc[layer, 1], d_h * o, torch.addcmul(torch.ones_like(tc), tc, tc, value=-1.0))
            d_gates = torch.empty_like(act)
            di, df, dg, do = d_gates.chunk(4, dim=0)
            torch.mul(d_c, g, out=di)
            torch.mul(d_c, hc[layer, 1], out=df)
            torch.mul(d_c, i, out=dg)
            torch.mul(d_h, tc, out=do)
            # σ' = σ(1 − σ) for i, f, o, applied as d·σ − (d·σ)·σ; tanh' = 1 − g².
            for part, a in ((d_gates[: 2 * hidden], act[: 2 * hidden]), (do, o)):
                part.mul_(a)
                part.addcmul_(part, a, value=-1.0)
            dg.addcmul_(dg, g.square(), value=-1.0)
            d_weights[2 * layer] = d_gates.mm(z.t())
            d_weights[2 * layer + 1] = d_gates.sum(1)
            d_z = weights[2 * layer].t().mm(d_gates)  # (inputs + H, N)
            n_in = z.shape[0] - hidden
            d_hc[layer, 0] = d_z[n_in:]
            torch.mul(d_c, f, out=d_hc[layer, 1])
            d_h = d_z[:n_in]
            if layer == 0 and ctx.needs_input_grad[0]:
                d_x = d_h
        return d_x, d_hc, None, *d_weights


def _weight_list(config: OptimizerConfig, weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    names = [f"cell.{layer}.{part}" for layer in range(config.num_layers) for part in ("weight", "bias")]
    return [weights[k] for k in (*names, "head.weight", "head.bias")]


def to_columns(state: LSTMState) -> torch.Tensor:
    """The state as (L, 2, H, N) float32, coordinates along the contiguous axis."""
    return state.hc.to(torch.float32).permute(1, 2, 3, 0).contiguous()


def from_columns(hc: torch.Tensor, dtype: torch.dtype = torch.float32) -> LSTMState:
    return LSTMState(hc.permute(3, 0, 1, 2).contiguous().to(dtype))


def step_columns(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
                 hc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step on a (L, 2, H, N) state (see `to_columns`): returns (updates (N,), new state)."""
    x = preprocess(grads.to(torch.float32), config.preprocess, config.preprocess_p).t().contiguous()
    return _FusedStep.apply(x, hc, config.output_scale, *_weight_list(config, weights))


def step_fused(config: OptimizerConfig, weights: dict[str, torch.Tensor], grads: torch.Tensor,
               state: LSTMState) -> tuple[torch.Tensor, LSTMState]:
    """`step_autograd` with the fused backward: returns (updates, new_state)."""
    updates, hc = step_columns(config, weights, grads, to_columns(state))
    return updates, from_columns(hc, state.hc.dtype)
