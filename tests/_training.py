"""The training loop the reproducibility and thread tests share (not a test file)."""
from tinygrad_bn.nn import functional as F


def state_arrays(model):
    """The model's state dict as numpy copies."""
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


def run_steps(model, opt, loader, steps, before_step=None):
    """`steps` steps of cross-entropy + backward + opt.step() over `loader`, starting new
    epochs as needed; before_step() (if given) runs before each step. Returns the final
    state dict as numpy arrays."""
    step = 0
    while step < steps:
        for xb, yb in loader:
            if before_step is not None:
                before_step()
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == steps:
                break
    return state_arrays(model)
