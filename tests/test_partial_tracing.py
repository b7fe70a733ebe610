"""Models whose top-level forward does not trace get their parts fused, and the result is a
drop-in: a detector-style forward that routes tensors by attributes set on each layer still
runs, containers stay containers, a layer traced as a root keeps its default arguments."""
import copy

import torch
from torch import nn

import reparam
from reparam.models import randomize_bn_

torch.set_num_threads(1)


class ConvBNAct(nn.Module):
    """A layer as detection frameworks write it: conv, BN, activation, and flags."""

    def __init__(self, cin, cout, k=3, s=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, s, k // 2, bias=False)
        self.bn = randomize_bn_(nn.BatchNorm2d(cout))
        self.act = nn.SiLU()

    def forward(self, x, activate: bool = True, norm: bool = True):
        y = self.conv(x)
        if norm:
            y = self.bn(y)
        return self.act(y) if activate else y


class RepConv(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = ConvBNAct(c, c, 3)
        self.b = ConvBNAct(c, c, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.a(x, activate=False) + self.b(x, activate=False))


class Concat(nn.Module):
    def forward(self, xs):
        return torch.cat(xs, 1)


class Detector(nn.Module):
    """Layers in an nn.Sequential; the forward loops over them, feeding each the outputs of
    the layers its plain attribute ``f`` names and saving those later layers read."""

    def __init__(self):
        super().__init__()
        layers = [ConvBNAct(3, 8, 3, 2), RepConv(8), ConvBNAct(8, 8, 3, 2), RepConv(8),
                  Concat(), ConvBNAct(16, 8, 1)]
        froms = [-1, -1, -1, -1, [-1, 1], -1]
        for i, (m, f) in enumerate(zip(layers, froms)):
            m.i, m.f, m.type = i, f, type(m).__name__
        self.model = nn.Sequential(*layers)
        self.save = {1}

    def forward(self, x):
        if x.abs().max() > 1e6:  # a check on values: the forward does not trace
            raise ValueError("input out of range")
        y = []
        for m in self.model:
            if m.f != -1:
                x = [x if j == -1 else y[j] for j in m.f]
                if m.type == "Concat":  # sizes differ: pool the saved map down
                    x = [x[0], nn.functional.avg_pool2d(x[1], 2)]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x


def test_layer_routing_detector_runs_after_fusing_and_matches():
    model = Detector().double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    reference = copy.deepcopy(model)
    fused, report = reparam.fuse(model, report=True)
    assert any("skipped <model>" in n for n in report.notes)
    assert isinstance(fused.model, nn.Sequential) and len(fused.model) == 6
    assert [m.i for m in fused.model] == list(range(6))  # the routing attributes are kept
    with torch.no_grad():
        got, ref = fused(x), reference(x)
    assert ((got - ref).abs().max() / ref.abs().max()).item() <= 1e-9
    bns = [m for m in fused.modules() if isinstance(m, nn.BatchNorm2d)]
    assert not bns, report.details()  # every conv+BN folded, inside every layer
    assert report.fired["merge_parallel_branches"] == 2


def test_layer_with_flag_defaults_is_fused_and_guards_its_flags():
    class Parent(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = ConvBNAct(3, 4)

        def forward(self, x):
            if x.sum() > 0:  # control flow on a value: the parent does not trace
                return self.layer(x)
            return -self.layer(x)

    model = Parent().double().eval()
    fused, report = reparam.fuse(model, report=True)
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), rtol=1e-10, atol=1e-12)
    assert report.fired["fold_conv_bn"] == 1
    try:
        fused.layer(x, activate=False)
    except AssertionError as e:  # specialized to the default: another value is refused
        assert "specialized" in str(e)
    else:
        raise AssertionError("a call with another flag value must not run the fused layer")
