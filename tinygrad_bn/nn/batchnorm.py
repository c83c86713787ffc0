"""BatchNorm1d / BatchNorm2d modules (running statistics as buffers)."""
import numpy as np

from . import functional as F
from .module import Module, Parameter
from ..tensor import Tensor


class _BatchNorm(Module):
    _expected_ndims = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 impl="fused", dtype=None):
        super().__init__()
        if int(num_features) < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if impl not in ("fused", "composed"):
            raise ValueError(f"impl must be 'fused' or 'composed', got {impl!r}")
        self.num_features, self.eps, self.momentum = int(num_features), eps, momentum
        self.affine, self.track_running_stats, self.impl = affine, track_running_stats, impl
        dt = dtype or np.float32
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype=dt))
            self.bias = Parameter(np.zeros(num_features, dtype=dt))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros(num_features, dtype=dt)))
            self.register_buffer("running_var", Tensor(np.ones(num_features, dtype=dt)))
            self.register_buffer("num_batches_tracked", Tensor(np.zeros((), dtype=np.int64)))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self):
        """running_mean = 0, running_var = 1, num_batches_tracked = 0."""
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            self.weight.data[...] = 1
            self.bias.data[...] = 0

    def forward(self, x):
        if not isinstance(x, Tensor):
            raise TypeError(f"{type(self).__name__}: input must be a Tensor, got {type(x).__name__}")
        if x.ndim not in self._expected_ndims:
            dims = " or ".join(f"{d}-D" for d in self._expected_ndims)
            raise ValueError(f"{type(self).__name__}: expected {dims} input, got shape {x.shape}")
        if x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}: expected {self.num_features} channels (input.shape[1]), "
                             f"got input of shape {x.shape}")
        # NOTE: parameters and buffers read from their registries once each: every
        # self.running_mean goes through Module.__getattr__ (0.6-0.8 us a read), and this
        # runs for every BatchNorm layer of every step.
        params, buffers = self._parameters, self._buffers
        tracked = buffers["num_batches_tracked"]
        update = self.training and self.track_running_stats
        if update:
            count = int(tracked.data) + 1
            # momentum None: cumulative moving average (Algorithm 2's population statistics)
            factor = 1.0 / count if self.momentum is None else self.momentum
        else:
            factor = 0.0 if self.momentum is None else self.momentum
        use_running = not self.training and self.track_running_stats
        running = update or use_running
        y = F.batch_norm(
            x,
            buffers["running_mean"] if running else None,
            buffers["running_var"] if running else None,
            params["weight"], params["bias"], training=self.training or not self.track_running_stats,
            momentum=factor, eps=self.eps, impl=self.impl,
        )
        if update:  # only after batch_norm succeeded: a failed call is not counted
            tracked.data[...] = count
        return y

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, impl={self.impl!r}")


class BatchNorm1d(_BatchNorm):
    """BatchNorm over (N, C) or (N, C, L) input: statistics per channel over N (x L).
    Normalises with the biased batch variance; running_var tracks the unbiased one."""
    _expected_ndims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """BatchNorm over (N, C, H, W) input: one mean/variance and one gamma/beta per
    channel over all N*H*W positions (the paper's convolutional BN)."""
    _expected_ndims = (4,)
