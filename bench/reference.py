"""The straightforward baseline every speed-up is measured against: torch.nn.LSTMCell, stacked.

It loads the same weights as the kernel. Our fused `cell.{l}.weight` is (4H, in + H) = [W_ih | W_hh]
with gates i, f, g, o, exactly nn.LSTMCell's order, and `cell.{l}.bias` is the single bias, so
bias_ih = bias and bias_hh = 0. The head is a Linear H -> 1 whose output is multiplied by
config.output_scale; the inputs come from service.lopt.preprocess.
"""

from __future__ import annotations

import torch
from torch import nn

from service.lopt.config import OptimizerConfig
from service.lopt.preprocess import preprocess


class ReferenceLSTM(nn.Module):
    def __init__(self, config: OptimizerConfig, weights: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.cells = nn.ModuleList()
        with torch.no_grad():
            for layer in range(config.num_layers):
                fan_in = config.input_size if layer == 0 else h
                cell = nn.LSTMCell(fan_in, h)
                w = weights[f"cell.{layer}.weight"].detach().to(torch.float32)
                cell.weight_ih.copy_(w[:, :fan_in])
                cell.weight_hh.copy_(w[:, fan_in:])
                cell.bias_ih.copy_(weights[f"cell.{layer}.bias"])
                cell.bias_hh.zero_()
                self.cells.append(cell)
            self.head = nn.Linear(h, 1)
            self.head.weight.copy_(weights["head.weight"])
            self.head.bias.copy_(weights["head.bias"])

    @torch.no_grad()
    def step(self, grads: torch.Tensor, hc: torch.Tensor, *, chunk: int | None = None,
             out: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(updates, new hc) for grads (N,) and hc (N, layers, 2, H); the new hc is float32.
        `chunk` processes that many coordinates at a time (the cache-friendly variant); with `out`
        (updates, hc) each chunk's results are copied into those buffers, as a step into given buffers."""
        if chunk is None:
            return self._step(grads, hc)
        if out is not None:
            for s in range(0, grads.shape[0], chunk):
                u, new = self._step(grads[s:s + chunk], hc[s:s + chunk])
                out[0][s:s + chunk].copy_(u)
                out[1][s:s + chunk].copy_(new)
            return out
        parts = [self._step(grads[s:s + chunk], hc[s:s + chunk]) for s in range(0, grads.shape[0], chunk)]
        return torch.cat([u for u, _ in parts]), torch.cat([s for _, s in parts])

    def _step(self, grads: torch.Tensor, hc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        x = preprocess(grads.to(torch.float32), cfg.preprocess, cfg.preprocess_p)
        hc = hc.to(torch.float32)
        layers = []
        for layer, cell in enumerate(self.cells):
            h, c = cell(x, (hc[:, layer, 0], hc[:, layer, 1]))
            layers.append(torch.stack([h, c], dim=1))
            x = h
        updates = self.head(x).squeeze(-1) * cfg.output_scale
        return updates, torch.stack(layers, dim=1)
