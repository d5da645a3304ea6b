"""The network: any callable returning an `nn.Module`. tunetrack passes `num_classes` and
`in_shape` (C, H, W) because the signature names them; `stages` and `channels` come from
the study file's `model.init_args` (fixed or searched)."""

from __future__ import annotations

from torch import nn


class SmallConvNet(nn.Module):
    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], stages: int = 2,
                 channels: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_shape[0]
        for stage in range(stages):
            cout = channels * 2**stage
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(cin, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


class SmallMLP(nn.Module):
    """A network small enough that a CPU gains from training several trials of it at once
    (study_fused.yaml): trials that share `hidden` train as one model through torch.func."""

    def __init__(self, num_classes: int, in_shape: tuple[int, int, int], hidden: int = 64):
        super().__init__()
        c, h, w = in_shape
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)
