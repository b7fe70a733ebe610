"""A zoo of Rep-style network families, each with its authors' deploy conversion.

Every family module (``repvgg``, ``acnet``, ``dbb``, ``mobileone``, ``repvit``,
``qarepvgg``, ``replknet``, ``yolo_repconv``, ``fastvit``) is written from its
paper and exposes

* its training-time block class(es) and a small network of them;
* ``deploy_convert(block_or_net)``: the inference form, computed the way the
  authors describe it (kernel algebra in float64 here, independent of
  ``reparam``), returned as a new module with the original's dtype;
* ``deploy_conv_count(block_or_net)``: the number of convolutions the
  inference form has, counted from the block structure the paper states;
* ``cases()``: ``{name: (model, input_shape)}``, the models the tests run
  (the network and a few single blocks), built deterministically.

This module holds the float64 primitives every conversion uses (conv-BN
folding, centre padding of kernels, identity kernels) and the walkers that
replace blocks and count convolutions. Nothing here imports ``reparam``.
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

FAMILIES = ("repvgg", "acnet", "dbb", "mobileone", "repvit", "qarepvgg", "replknet",
            "yolo_repconv", "fastvit")


# --- the building block most families share -------------------------------------------

class ConvBN(nn.Module):
    """conv (no bias) then BatchNorm: the branch unit of RepVGG, ACNet, DBB, MobileOne, ..."""

    def __init__(self, cin, cout, k, stride, padding, groups):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


# --- float64 kernel primitives ---------------------------------------------------------

def f64(t: torch.Tensor) -> torch.Tensor:
    """A float64 CPU copy of ``t`` (detached)."""
    return t.detach().to("cpu", torch.float64).clone()


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``y = s * x + t`` per channel (float64)."""
    c = bn.num_features
    gamma = f64(bn.weight) if bn.weight is not None else torch.ones(c, dtype=torch.float64)
    beta = f64(bn.bias) if bn.bias is not None else torch.zeros(c, dtype=torch.float64)
    s = gamma / torch.sqrt(f64(bn.running_var) + bn.eps)
    return s, beta - f64(bn.running_mean) * s


def conv_wb(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of ``conv`` in float64; a missing bias is zeros."""
    w = f64(conv.weight)
    b = f64(conv.bias) if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    return w, b


def fold_bn(w: torch.Tensor, b: torch.Tensor, bn: nn.BatchNorm2d):
    """The kernel of ``bn(conv_{w,b}(x))``: ``(s w, s b + t)`` (the paper's conv-BN fusion)."""
    s, t = bn_scale_shift(bn)
    return w * s.view(-1, *([1] * (w.dim() - 1))), s * b + t


def conv_bn_wb(conv: nn.Conv2d, bn: nn.BatchNorm2d):
    """(weight, bias) of ``bn(conv(x))`` in float64."""
    return fold_bn(*conv_wb(conv), bn)


def centre_pad(w: torch.Tensor, size) -> torch.Tensor:
    """Zero-pad the spatial dims of kernel ``w`` symmetrically to ``size`` (int or (h, w))."""
    kh, kw = (size, size) if isinstance(size, int) else size
    h, ww = w.shape[-2:]
    dh, dw = kh - h, kw - ww
    assert dh >= 0 and dw >= 0 and dh % 2 == 0 and dw % 2 == 0, (w.shape, size)
    return torch.nn.functional.pad(w, [dw // 2, dw // 2, dh // 2, dh // 2])


def identity_kernel(channels: int, groups: int, k: int = 1) -> torch.Tensor:
    """The ``k x k`` kernel (``groups`` groups) of ``x -> x``: one 1 at the centre per channel."""
    per_group = channels // groups
    w = torch.zeros(channels, per_group, k, k, dtype=torch.float64)
    for i in range(channels):
        w[i, i % per_group, k // 2, k // 2] = 1.0
    return w


def bn_kernel(bn: nn.BatchNorm2d, groups: int, k: int = 1):
    """``bn(x)`` as a ``k x k`` conv with ``groups`` groups: a scaled identity kernel."""
    return fold_bn(identity_kernel(bn.num_features, groups, k),
                   torch.zeros(bn.num_features, dtype=torch.float64), bn)


def make_conv(w: torch.Tensor, b: torch.Tensor, *, stride=1, padding=0, groups=1,
              like: torch.Tensor) -> nn.Conv2d:
    """An ``nn.Conv2d`` computing kernel ``(w, b)``, with ``like``'s dtype and device."""
    out_c, in_per_group, kh, kw = w.shape
    conv = nn.Conv2d(in_per_group * groups, out_c, (kh, kw), stride, padding, groups=groups,
                     bias=True, dtype=like.dtype, device=like.device)
    with torch.no_grad():
        conv.weight.copy_(w.to(like.dtype))
        conv.bias.copy_(b.to(like.dtype))
    return conv


# --- walkers ---------------------------------------------------------------------------

def convert_modules(model: nn.Module, table) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every module that is an instance of a
    class in ``table`` (a sequence of ``(class, convert)``, first match wins) replaced by
    ``convert(module)``; a replaced module's children are not visited.
    """
    def visit(m: nn.Module) -> nn.Module:
        for cls, convert in table:
            if isinstance(m, cls):
                return convert(m)
        for name, child in list(m.named_children()):
            setattr(m, name, visit(child))
        return m

    with torch.no_grad():
        return visit(copy.deepcopy(model)).eval()


def count_convs(model: nn.Module, table) -> int:
    """Convs of ``model``'s inference form: a module that is an instance of a class in
    ``table`` (``(class, count)`` pairs, ``count`` an int or a function of the module)
    contributes ``count``, another conv module 1, anything else the sum over its children.
    """
    for cls, n in table:
        if isinstance(model, cls):
            return n(model) if callable(n) else n
    if isinstance(model, CONVS):
        return 1
    return sum(count_convs(c, table) for c in model.children())


def called_convs(model: nn.Module) -> list[nn.Module]:
    """The conv modules (``nn.Conv1d/2d/3d``) called in ``model``'s fx graph, in order.

    A ``GraphModule`` is read as it is; any other module is traced with
    ``torch.fx.symbolic_trace`` first, as the child of a wrapper (so that a model
    that is itself a conv shows as a call of that conv, not of ``F.conv2d``).
    """
    gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(nn.Sequential(model))
    mods = dict(gm.named_modules())
    return [mods[n.target] for n in gm.graph.nodes
            if n.op == "call_module" and isinstance(mods[n.target], CONVS)]


def seeded(seed: int, build):
    """``build()`` with the global torch RNG seeded (and restored afterwards)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()
