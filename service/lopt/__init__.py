"""The learned optimizer, pure torch: preprocessing, the coordinatewise LSTM, its state, its checkpoint."""

from service.lopt.checkpoint import Checkpoint, CheckpointError
from service.lopt.config import ConfigError, OptimizerConfig
from service.lopt.functional import init, step
from service.lopt.network import CoordinatewiseLSTM, weight_shapes
from service.lopt.preprocess import preprocess
from service.lopt.state import LSTMState, state_nbytes

__all__ = [
    "Checkpoint", "CheckpointError", "ConfigError", "CoordinatewiseLSTM", "LSTMState",
    "OptimizerConfig", "init", "preprocess", "state_nbytes", "step", "weight_shapes",
]
