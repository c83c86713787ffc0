"""Shared plumbing for the example scripts: arguments, progress bar, evaluation, plots."""
import argparse
import os

import numpy as np

import tinygrad_bn as tb


def base_parser(description, epochs, out):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="OpenMP threads (default: all usable CPUs)")
    p.add_argument("--impl", choices=["fused", "composed"], default="fused", help="BatchNorm implementation")
    p.add_argument("--no-bn", action="store_true", help="train the same net without BatchNorm")
    p.add_argument("--out", default=out, help="folder for the figure and the saved weights")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def setup(args):
    if args.threads:
        tb.set_num_threads(args.threads)
    tb.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)


def progress(iterable, quiet, **kw):
    """tqdm progress bar when available and wanted, else the plain iterable."""
    if quiet:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, **kw)


@tb.no_grad()
def accuracy(model, x, y, batch_size=512):
    """Fraction of correct argmax predictions of model (in eval mode) on numpy x, y."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        pred = model(tb.Tensor(x[i:i + batch_size])).argmax(axis=1).numpy()
        correct += int((pred == y[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / len(x)


def train_epochs(model, opt, loader, x_test, y_test, epochs, quiet, desc):
    """Standard loop; returns a history dict of per-epoch loss / train acc / test acc."""
    F = tb.nn.functional
    history = {"loss": [], "train_acc": [], "test_acc": []}
    bar = progress(range(epochs), quiet, desc=desc)
    for _ in bar:
        model.train()
        total, correct, count = 0.0, 0, 0
        for xb, yb in loader:
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(yb)
            correct += int((logits.data.argmax(1) == yb.data).sum())
            count += len(yb)
        history["loss"].append(total / count)
        history["train_acc"].append(correct / count)
        history["test_acc"].append(accuracy(model, x_test, y_test))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / count:.4f}", acc=f"{correct / count:.3f}",
                            test=f"{history['test_acc'][-1]:.3f}")
    return history


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None (after a note) when
    matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no figure (pip install -e '.[examples]')")
        return None
    return plt


def plot_history(history, path, title):
    """Write loss and accuracy curves to a PNG (skipped, with a note, without matplotlib)."""
    plt = pyplot()
    if plt is None:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = np.arange(1, len(history["loss"]) + 1)
    a.plot(epochs, history["loss"])
    a.set(xlabel="epoch", ylabel="training loss", title=title)
    b.plot(epochs, history["train_acc"], label="train")
    b.plot(epochs, history["test_acc"], label="test")
    b.set(xlabel="epoch", ylabel="accuracy")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def minibatches(rng, n, batch_size):
    """Endless index batches over n samples: a fresh rng.permutation(n) each pass, cut
    into batch_size pieces (a last short piece is skipped). The first permutation is
    drawn now, the later ones as they are needed, so the rng is used in that order."""
    order = rng.permutation(n)

    def batches(order=order, pos=0):
        while True:
            if pos + batch_size > len(order):
                order, pos = rng.permutation(n), 0
            yield order[pos:pos + batch_size]
            pos += batch_size
    return batches()


def sgd_step(net, opt, x, y):
    """One step on numpy x, y: cross-entropy of net(x), backward, opt.step(). Returns the loss."""
    loss = tb.nn.functional.cross_entropy(net(tb.Tensor(x)), tb.Tensor(y))
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss
