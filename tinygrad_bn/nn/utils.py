"""Inference helpers for BatchNorm (the paper's Algorithm 2).

update_bn(batches, model)   recompute population statistics exactly, as
                            torch.optim.swa_utils.update_bn does
fold_batch_norm(model)      an inference copy with each BatchNorm that follows a
                            Linear/Conv folded into that layer's weight and bias
"""
import copy

import numpy as np

from ..grad_mode import no_grad
from ..tensor import Tensor
from .batchnorm import _BatchNorm
from .conv import Conv1d, Conv2d
from .layers import Identity, Linear, Sequential
from .module import Parameter


def _as_input(batch):
    # A loader may yield (x, y) pairs: the input is the first element (as torch's update_bn).
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, np.ndarray):
        return Tensor(batch)
    raise TypeError(f"update_bn: each batch must be a Tensor, a numpy array or a tuple whose first element is one, "
                    f"got {type(batch).__name__}")


def update_bn(batches, model):
    """Set every BatchNorm's running statistics to population statistics over `batches`.

    batches: an iterable of input Tensors or numpy arrays (or (input, label) pairs, e.g.
    a tb.data.DataLoader); model: a Module. Under no_grad, each BatchNorm that tracks
    running stats is reset and switched to momentum=None (cumulative average), and every
    batch is run through the model in train mode, so afterwards

        running_mean = mean over batches of the batch mean
        running_var  = mean over batches of the UNBIASED batch variance var_B * m/(m-1)

    which is Algorithm 2's E[x] and (m/(m-1)) E_B[var_B] when the batches have equal
    size m. Each BatchNorm's momentum and every submodule's train/eval mode are restored
    afterwards. Dropout also runs in train mode during the pass (as in torch).

    Returns None. A model without such BatchNorm layers is left untouched without
    iterating `batches`. If a batch fails (bad shape, a batch of one sample), the
    running statistics, momenta and modes are restored and the error is re-raised.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        return
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(bn, bn.momentum) for bn in bns]
    saved = [(bn, bn.running_mean.data.copy(), bn.running_var.data.copy(), bn.num_batches_tracked.data.copy())
             for bn in bns]
    ok = False
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        model.train()
        with no_grad():
            for batch in batches:
                model(_as_input(batch))
        ok = True
    finally:
        if not ok:
            for bn, mean, var, count in saved:
                bn.running_mean.data[...] = mean
                bn.running_var.data[...] = var
                bn.num_batches_tracked.data[...] = count
        for bn, momentum in momenta:
            bn.momentum = momentum
        for m, training in modes:
            object.__setattr__(m, "training", training)


# Layers whose output channel is axis 0 of the weight and axis 1 of the output.
_FOLDABLE = (Linear, Conv1d, Conv2d)


def _fold_into(layer, bn):
    """W' = W * scale (per output channel), b' = (b - running_mean) * scale + beta,
    scale = gamma / sqrt(running_var + eps); computed in float64, stored in W's dtype."""
    if not bn.track_running_stats or bn.running_mean is None:
        raise ValueError(f"fold_batch_norm: {bn!r} has track_running_stats=False: it has no population "
                         f"statistics to fold (it normalises with batch statistics even in eval mode)")
    out_channels = layer.weight.shape[0]
    if bn.num_features != out_channels:
        raise ValueError(f"fold_batch_norm: {type(bn).__name__} has {bn.num_features} features but the "
                         f"{type(layer).__name__} before it has {out_channels} output channels")
    dtype = layer.weight.dtype
    mean = bn.running_mean.data.astype(np.float64)
    var = bn.running_var.data.astype(np.float64)
    gamma = bn.weight.data.astype(np.float64) if bn.weight is not None else np.ones(out_channels)
    beta = bn.bias.data.astype(np.float64) if bn.bias is not None else np.zeros(out_channels)
    scale = gamma / np.sqrt(var + bn.eps)
    weight = layer.weight.data.astype(np.float64) * scale.reshape((-1,) + (1,) * (layer.weight.ndim - 1))
    bias = layer.bias.data.astype(np.float64) if layer.bias is not None else np.zeros(out_channels)
    layer.weight = Parameter(np.ascontiguousarray(weight, dtype=dtype), requires_grad=layer.weight.requires_grad)
    layer.bias = Parameter(((bias - mean) * scale + beta).astype(dtype))


def _fold_sequential(seq, folded):
    names = [name for name, m in seq._modules.items() if m is not None]
    for prev, name in zip(names, names[1:]):
        layer, bn = seq._modules[prev], seq._modules[name]
        if isinstance(layer, _FOLDABLE) and isinstance(bn, _BatchNorm):
            if id(layer) in folded:
                raise ValueError(f"fold_batch_norm: {layer!r} is shared and followed by a BatchNorm in more "
                                 f"than one place; it cannot hold two foldings")
            folded.add(id(layer))
            _fold_into(layer, bn)
            setattr(seq, name, Identity())


def fold_batch_norm(model):
    """Return an inference copy of `model` (copy.deepcopy, in eval mode) in which every
    BatchNorm that directly follows a Linear, Conv1d or Conv2d inside a Sequential (at any
    depth) is folded into that layer and replaced by nn.Identity.

    In eval mode BatchNorm is the fixed affine map y = scale * (x - running_mean) + beta
    per channel, scale = gamma / sqrt(running_var + eps) (gamma = 1, beta = 0 when
    affine=False), so it composes with the layer before it:

        W' = W * scale   (per output channel)     b' = (b - running_mean) * scale + beta

    A bias is created where the layer had none. The copy's eval-mode output equals the
    original's eval-mode output up to float rounding; `model` itself is not changed.
    A Linear is assumed to see 2-D (N, in) input, as BatchNorm1d after it normalises axis 1.

    Raises ValueError if a BatchNorm to fold has track_running_stats=False (there are no
    population statistics to fold), if its num_features differs from the layer's output
    channels, or if one shared layer would be folded twice.
    """
    folded_model = copy.deepcopy(model)
    folded = set()
    for m in list(folded_model.modules()):
        if isinstance(m, Sequential):
            _fold_sequential(m, folded)
    return folded_model.eval()
