"""The coordinatewise LSTM: one small network shared by every coordinate (section 2.1)."""

from __future__ import annotations

import math

import torch
from torch import nn

from service.lopt import feature_mlp
from service.lopt.config import OptimizerConfig


def weight_shapes(config: OptimizerConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every weight a config implies.

    For the feature MLP see `feature_mlp.weight_shapes`. For the LSTM:

    Each layer's input and recurrent matrices are fused into one (4H, in + H)
    matrix, gates ordered i, f, g, o as in torch.nn.LSTMCell, so one matrix
    product gives all four gates.
    """
    if config.architecture == "feature_mlp":
        return feature_mlp.weight_shapes(config.hidden_size, config.num_layers, bool(config.step_memory))
    h = config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(config.num_layers):
        fan_in = config.input_size if layer == 0 else h
        shapes[f"cell.{layer}.weight"] = (4 * h, fan_in + h)
        shapes[f"cell.{layer}.bias"] = (4 * h,)
    shapes["head.weight"] = (1, h)
    shapes["head.bias"] = (1,)
    return shapes


class CoordinatewiseLSTM(nn.Module):
    """Holds the weights φ as trainable parameters; the computation lives in `lopt.step`.

    Despite its name it holds either architecture's weights (the config says which): the LSTM's, or the
    feature MLP's (initialised so that the rule starts as Adam).

    Parameters are registered through nn.ParameterDict so that every one of them
    is seen by the meta-optimizer (a plain Python list would silently hide them).
    """

    def __init__(self, config: OptimizerConfig, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = config
        self.params = nn.ParameterDict()
        if config.architecture == "feature_mlp":
            for name, w in feature_mlp.init_weights(config.hidden_size, config.num_layers, generator,
                                                    bool(config.step_memory)).items():
                self.params[name.replace(".", "_")] = nn.Parameter(w)
            return
        bound = 1.0 / math.sqrt(config.hidden_size)
        for name, shape in weight_shapes(config).items():
            w = torch.empty(shape).uniform_(-bound, bound, generator=generator)
            if name.startswith("cell.") and name.endswith(".bias"):
                # A forget-gate bias of 1 keeps early memories alive, as is usual for LSTMs.
                w[config.hidden_size: 2 * config.hidden_size] += 1.0
            if name.startswith("head."):
                w *= 0.1
            self.params[name.replace(".", "_")] = nn.Parameter(w)

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights by their checkpoint names, as live (differentiable) tensors."""
        return {name: self.params[name.replace(".", "_")] for name in weight_shapes(self.config)}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in weights.items():
                self.params[name.replace(".", "_")].copy_(value)
