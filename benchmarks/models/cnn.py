"""PyTorch's MNIST example network in lantern_stage (the paper's CNN).

conv1(1, 10, 5) -> max_pool 2 -> relu -> conv2(10, 20, 5) -> max_pool 2 ->
relu -> fc1(320, 50) -> relu -> [dropout 0.5] -> fc2(50, 10) ->
log_softmax + nll_loss (mean); SGD lr 0.05, batches of 100.
"""
# No `from __future__ import annotations`: annotations come from the config.
import lantern_stage as lt
from lantern_stage import nn

from benchmarks.models import LanternTrainer, main


class MnistCNN(nn.Module):
    def __init__(self, dropout: bool = False, p: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)
        self.dropout = nn.Dropout(p) if dropout else None

    def logits(self, x):
        x = lt.relu(lt.max_pool2d(self.conv1(x), 2))
        x = lt.relu(lt.max_pool2d(self.conv2(x), 2))
        x = lt.relu(self.fc1(x.reshape(-1, 320)))
        if self.dropout is not None:
            x = self.dropout(x)
        return self.fc2(x)

    def forward(self, x, y):
        return lt.nll_loss(lt.log_softmax(self.logits(x), axis=1), y)


def build(weights, cfg) -> LanternTrainer:
    model = MnistCNN(cfg.dropout, cfg.dropout_p)
    model.load_state_dict(weights)

    def loss_fn(model, x: lt.Tensor[cfg.batch, 1, 28, 28], y: lt.Tensor[cfg.batch, "int32"]):
        return model(x, y)

    opt = lt.optim.SGD(model.parameters(), lr=cfg.lr)
    step = lt.train_step(model, loss_fn, opt, clip_grad_norm=cfg.clip, name="cnn_step")
    return LanternTrainer(model, step, lambda batch: (batch.x, batch.y))


if __name__ == "__main__":
    main("cnn", build)
