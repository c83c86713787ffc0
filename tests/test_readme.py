"""The README's Python examples run as written."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


def test_readme_python_blocks_run():
    blocks = _python_blocks()
    assert len(blocks) >= 2
    for block in blocks:
        namespace = {}
        # "<README.md>": not a real path, so nothing tries to read source lines from the file
        exec(compile(block, "<README.md>", "exec"), namespace)
        for name, fn in namespace.items():
            if name.startswith("test_") and callable(fn):
                fn()  # the README's property test, run under the active Hypothesis profile
