"""Tiny torch models used as ``--torch tests/torch_models.py:<factory>`` in the tests."""

import torch
from torch import nn


def _seeded(cls, *args):
    torch.manual_seed(0)
    return cls(*args).eval()


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Branchy(nn.Module):
    """Data-dependent control flow: tracing records only the branch the example input took."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Linear(8, 4)
        self.neg = nn.Linear(8, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.pos(x)
        return self.neg(x)


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 12)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        features = torch.relu(self.body(x))
        return {"logits": self.head(features), "features": features.reshape(-1, 3, 4)}


class NestedTupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 3)
        self.b = nn.Linear(6, 4)

    def forward(self, x):
        return self.a(x), (self.b(x).sum(dim=-1), torch.sigmoid(self.b(x)).reshape(-1, 2, 2))


class TwoInputs(nn.Module):
    def forward(self, a, b):
        return a * 2 + b


def small_net():
    return _seeded(SmallNet)


def branchy():
    return _seeded(Branchy)


def dict_out():
    return _seeded(DictOut)


def nested_tuple_out():
    return _seeded(NestedTupleOut)
