"""Layers, losses and initialisers in PyTorch's idiom."""
from . import functional, init
from .batchnorm import BatchNorm1d, BatchNorm2d
from .conv import AvgPool2d, Conv1d, Conv2d, MaxPool1d, MaxPool2d
from .layers import Dropout, Flatten, Identity, LeakyReLU, Linear, ReLU, Sequential, Sigmoid, Tanh
from .module import Module, Parameter
from . import utils  # noqa: E402  (builds on the modules above)
