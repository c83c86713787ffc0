"""Optimisers and learning-rate schedules following torch.optim's formulas and defaults.

They update `param.data` in place (numpy, no graph) and work on any float leaf Tensor.
"""
from . import lr_scheduler
from .adam import Adam, AdamW
from .optimizer import Optimizer
from .sgd import SGD

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]
