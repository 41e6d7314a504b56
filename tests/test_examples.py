"""The README's example and examples/ run as shown."""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_example_runs(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README.md has no python example"
    namespace = {"__name__": "readme_example"}
    exec(compile(blocks[0], str(ROOT / "README.md"), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "def step(" in printed and 'extern "C"' in printed
    assert float(namespace["loss"]) < 0.5  # 100 steps of SGD fit the 32 points


def test_train_mlp_example_reduces_the_loss(capsys):
    spec = importlib.util.spec_from_file_location("train_mlp", ROOT / "examples" / "train_mlp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    final = module.main(["--epochs", "8"])
    assert final < 0.9  # from log(3) = 1.1 at the start
    assert "training accuracy" in capsys.readouterr().out
