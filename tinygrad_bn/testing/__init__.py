"""Tools for testing gradients, the engine's and your own.

    tb.testing.gradcheck(fn, inputs)        first derivatives vs central differences
    tb.testing.gradgradcheck(fn, inputs)    second derivatives (gradcheck of backward)
    tb.testing.assert_allclose(t, ref)      Tensor vs numpy reference, shape/dtype strict
    tb.testing.GradcheckError               raised by both checks (an AssertionError)
    tb.testing.check_implementations_agree(f, g, inputs, rtol=, atol=)    two implementations: values, grads, grad-grads
    tb.testing.assert_implementations_agree(f, g, strategy, rtol=, atol=)  the same over Hypothesis draws
    tb.testing.strategies                   Hypothesis strategies: shapes, arrays, tensors,
                                            broadcastable shapes, batch-norm inputs

`strategies` is imported on first use, so `import tinygrad_bn` does not need
Hypothesis (install the `test` extra for it).
"""
import importlib

from .agreement import DisagreementError, assert_implementations_agree, check_implementations_agree
from .gradcheck import GradcheckError, assert_allclose, gradcheck, gradgradcheck

__all__ = ["DisagreementError", "GradcheckError", "assert_allclose", "assert_implementations_agree",
           "check_implementations_agree", "gradcheck", "gradgradcheck", "strategies"]


def __getattr__(name):
    # PEP 562: load the Hypothesis-backed module only when it is asked for.
    if name == "strategies":
        return importlib.import_module(".strategies", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
