"""PyTorch eager: the twins of `torch_models`, trained op by op (the paper's PyTorch column)."""
from __future__ import annotations

from benchmarks.frameworks._common import missing


def available():
    try:
        import torch
    except Exception as e:
        return False, missing("torch", e)
    return True, torch.__version__


def configure_threads(**_) -> str:
    import torch
    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:   # already set, or parallel work has started
        pass
    return f"torch.set_num_threads(1) -> {torch.get_num_threads()}, interop {torch.get_num_interop_threads()}"


def versions() -> dict:
    import torch
    return {"torch": torch.__version__}


def build(model, weights, cfg):
    from benchmarks.frameworks.torch_models import TorchTrainer, from_weights
    return TorchTrainer(model, from_weights(model, weights, cfg), cfg)


def build_lstm_fused(model, weights, cfg):
    from benchmarks.frameworks.torch_models import TorchTrainer, lstm_fused_from_weights
    return TorchTrainer(model, lstm_fused_from_weights(weights, cfg), cfg)


def variants(model, **_) -> dict:
    """Formulations timed side by side (label -> build); the fastest counts as
    PyTorch's time. The LSTM also as `nn.LSTM`, PyTorch's fused sequence kernel."""
    if model == "lstm":
        return {"LSTMCell loop": build, "nn.LSTM": build_lstm_fused}
    return {}
