"""Whether operations record a graph. Thread-local: one thread's no_grad does not
affect another's."""
import functools
import threading

class _State(threading.local):
    enabled = True  # class default: every new thread starts with grad enabled


state = _State()  # Function.apply reads state.enabled directly (hot path)


def is_grad_enabled():
    """True unless the calling thread is inside no_grad (or backward without create_graph)."""
    return state.enabled


def set_grad_enabled(mode):
    """Turn graph recording on or off for the calling thread; returns the previous mode."""
    prev = state.enabled
    state.enabled = bool(mode)
    return prev


class _GradMode:
    mode = True

    def __enter__(self):
        self._prev = set_grad_enabled(self.mode)
        return self

    def __exit__(self, *exc):
        set_grad_enabled(self._prev)
        return False

    def __call__(self, func):
        """Use as a decorator: run `func` entirely in this mode."""
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with type(self)():
                return func(*args, **kwargs)
        return wrapper


class no_grad(_GradMode):
    """Context manager and decorator: ops inside record no graph (outputs do not require grad)."""
    mode = False


class enable_grad(_GradMode):
    """Context manager and decorator: re-enable graph recording inside a no_grad block."""
    mode = True
