"""Meta-training: truncated-BPTT unrolls, the outer loop, baselines and evaluation."""

from service.metatrain.baselines import BASELINES, TunedBaseline, tune, tune_all
from service.metatrain.evaluate import Curve, EvaluationReport, evaluate
from service.metatrain.resume import ResumeCheckpoint
from service.metatrain.settings import MetaTrainSettings
from service.metatrain.trainer import (
    MetaTrainingDiverged,
    MetaTrainingStopped,
    MetaTrainResult,
    Progress,
    meta_train,
)

__all__ = [
    "BASELINES", "Curve", "EvaluationReport", "MetaTrainResult", "MetaTrainSettings", "MetaTrainingDiverged",
    "MetaTrainingStopped", "Progress", "ResumeCheckpoint", "TunedBaseline", "evaluate", "meta_train", "tune",
    "tune_all",
]
