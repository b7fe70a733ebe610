"""Helpers shared by the rules: node -> kernel, Add trees, small graph queries."""
from __future__ import annotations

import numpy as np

from reparam import kernel
from reparam.cost import Cost, conv_cost
from reparam.ir import Graph, Node, TensorType
from reparam.rewrite import RefuseFold
from reparam.kernel import Conv, Refusal


def conv_kernel(node: Node) -> Conv | Refusal:
    """The canonical conv of a ``conv`` node, or why it may not be folded."""
    why = node.attrs.get("refuse")
    if why is not None:
        return Refusal(why.kind, f"{node.name}: {why.reason}")
    return node.attrs["kernel"]


def bn_kernel(node: Node, ndim: int | None = None) -> Conv | Refusal:
    """A ``bn`` node as a depthwise 1x..x1 conv (see :func:`reparam.kernel.from_bn`) over the
    spatial rank of its input's type; ``ndim``: the rank a partner conv needs."""
    a = node.attrs
    if a.get("refuse") is not None:
        return Refusal(a["refuse"].kind, f"{node.name}: {a['refuse'].reason}")
    t = node.inputs[0].type
    spatial = t.spatial_rank if t is not None else None
    if spatial is None:
        return Refusal("type", f"{node.name}: the rank of the BatchNorm input is unknown")
    if ndim is not None and ndim != spatial:
        return Refusal("rank", f"{node.name}: normalises a {spatial}-d input, not {ndim}-d")
    stats = [a["mean"], a["var"], a["weight"], a["bias"]]
    if not all(np.isfinite(s).all() for s in stats):
        return Refusal("stats", f"{node.name}: BatchNorm statistics or parameters are not finite")
    if np.any(a["var"] + a["eps"] <= 0):
        return Refusal("stats", f"{node.name}: BatchNorm variance + eps is not positive")
    return kernel.from_bn(a["mean"], a["var"], a["weight"], a["bias"], a["eps"], spatial)


def other_users(node: Node, *users: Node) -> list[str]:
    """Names of nodes other than ``users`` that read ``node``."""
    return sorted({u.name for u in node.data_users if u not in users})


def is_inner_add(node: Node) -> bool:
    """An Add whose only use is one operand of another Add: part of a bigger tree."""
    return len(node.users) == 1 and node.users[0].op == "add"  # (a meta read makes it a root)


def add_coeffs(node: Node) -> tuple[float, ...]:
    """An ``add`` node computes ``sum(c_i * inputs[i])``; ``coeffs`` default to all 1."""
    return tuple(node.attrs.get("coeffs") or (1.0,) * len(node.inputs))


def add_terms(root: Node) -> list[tuple[Node, float]]:
    """(operand, coefficient) of the weighted sum under ``root``, inner single-use Adds expanded."""
    terms = []
    for i, c in zip(root.inputs, add_coeffs(root)):
        if i.op == "add" and is_inner_add(i):
            terms.extend((n, c * ci) for n, ci in add_terms(i))
        else:
            terms.append((i, c))
    return terms


def add_tree(root: Node) -> list[Node]:
    """The Add nodes of the tree under ``root``: ``root`` and the inner Adds :func:`add_terms`
    expands."""
    nodes = [root]
    for i in root.inputs:
        if i.op == "add" and is_inner_add(i):
            nodes.extend(add_tree(i))
    return nodes


def combined_terms(root: Node) -> list[tuple[Node, float]]:
    """:func:`add_terms` with one term per operand, the coefficients of an operand the tree
    reads more than once summed (``a + x + 2 * a`` is ``3 * a + x``)."""
    coeffs: dict = {}
    for n, c in add_terms(root):
        coeffs[n] = coeffs.get(n, 0.0) + c
    return list(coeffs.items())


def moved_read_mutator(graph: Graph, root: Node) -> str | None:
    """Why flattening the Add tree under ``root`` would change what it computes, or None.

    A sum rebuilt from the tree's terms reads them all at ``root``; an operand of an inner
    Add was read earlier, at that Add. Something that may change it in place between the two
    reads (``a = b + c; d = a + e; a.relu_(); f = d + x``) makes the moved read see other
    contents.
    """
    for inner in add_tree(root)[1:]:
        for i in inner.inputs:
            mutator = graph.mutation_between(i, inner.pos, root.pos)
            if mutator is not None:
                return (f"{mutator} may change {i.name} in place between its reads by "
                        f"{inner.name} and {root.name}")
    return None


def add_leaves(root: Node) -> list[Node]:
    """Operands of the Add tree under ``root`` (see :func:`add_terms`)."""
    return [n for n, _ in add_terms(root)]


def add_root(node: Node) -> Node:
    """The outermost Add of the tree that ``node`` (an Add) belongs to."""
    while is_inner_add(node):
        node = node.users[0]
    return node


def is_zero_pad(k: Conv) -> bool:
    """``k`` only zero-pads: depthwise 1x..x1 weights all 1, stride and dilation 1, no bias.

    (The frontends lift ``Pad`` with constant 0 in this form.)
    """
    return (k.groups == k.out_channels == k.in_channels
            and all(s == 1 for s in k.kernel_size + k.stride + k.dilation)
            and not np.any(k.bias) and bool(np.all(k.weight == 1)))


def kernel_cost(k: Conv) -> Cost:
    """What a lifted layer costs: a zero pad moves data and multiplies nothing, so it is free
    (pricing it as the 1x1 conv it is lifted as would let a fold replace pads by real work)."""
    return Cost() if is_zero_pad(k) else conv_cost(k)


def shared_values(node: Node) -> int:
    """How many of ``node``'s weight values other nodes still read (attr ``shared``, a
    :class:`~reparam.ir.SharedWeight` set by a frontend): those stay whatever a fold of
    ``node`` does."""
    weight = node.attrs.get("shared")
    return weight.values if weight is not None and weight.readers > 1 else 0


def node_cost(node: Node, k: Conv) -> Cost:
    """:func:`kernel_cost` of ``node``'s kernel ``k``, less its :func:`shared_values`."""
    c = kernel_cost(k)
    return Cost(c.macs, c.params - shared_values(node))


def runs_per_output(second: Conv) -> float:
    """How often, at least, a layer feeding ``second`` runs per output position of ``second``,
    whatever the input size (the product over spatial dimensions).

    ``prod(stride)`` when ``second``'s output is never longer than its input divided by its
    stride; when ``second`` pads its input to a longer output (a pad, a 1x1 conv with
    padding, a strided conv on odd sizes), fewer: the minimum of ``L / L_out`` over input
    lengths ``L``, so a fold priced with it never costs more for any input size.
    """
    total = 1.0
    for (b, e), k, s, d in zip(second.pads, second.kernel_size, second.stride, second.dilation):
        reach = b + e - d * (k - 1)  # L_out = floor((L + reach - 1) / s) + 1
        if reach <= 1 - s:
            total *= s
        else:
            lo = max(1, 1 - reach)
            total *= min(n / ((n + reach - 1) // s + 1) for n in range(lo, lo + 64 * s))
    return total


#: largest finite value of the dtypes a folded weight may be cast back to
DTYPE_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38, "float32": 3.4028234663852886e38}


def _abs_max(a: np.ndarray):
    """``np.abs(a).max()`` (NaN if ``a`` holds one) without a temporary copy of ``a``."""
    return np.max([np.abs(a.max()), np.abs(a.min())])


def new_conv(graph: Graph, source: Node, conv, like: Node, readers: list[Node],
             type: TensorType | None, folded=(), op: str = "conv") -> Node:
    """Insert a conv node reading ``source``, named after ``like``, computing a value of
    ``type`` (that of the value it replaces), right before the first of ``readers``
    (``op`` "conv_transpose" for a :class:`~reparam.kernel.ConvTranspose`); see
    :func:`new_layer`."""
    if op == "conv" and conv.ndim == 0 and conv.groups != 1 and not conv.groups == \
            conv.in_channels == conv.out_channels:
        raise RefuseFold(Refusal("unsupported", f"{like.name}: a grouped linear layer (only "
                                                "dense and per-channel ones are built)"))
    return new_layer(graph, op, source, {"kernel": conv}, (conv.weight, conv.bias), like,
                     readers, type, folded)


def new_layer(graph: Graph, op: str, source: Node, attrs: dict, arrays, like: Node,
              readers: list[Node], type: TensorType | None, folded=()) -> Node:
    """Insert a node ``op`` with ``attrs`` reading ``source``, named after ``like``, computing
    a value of ``type`` (that of the value it replaces), right before the first of
    ``readers``; ``arrays`` are its weights.

    ``readers`` are the nodes whose reads of ``source`` the new node stands for;
    ``folded`` the ``(node, same_shape)`` the fold removes besides the one it
    replaces: their metadata reads move to the new node (``same_shape``: that
    node's output has the new node's shape, so a read of its shape may move too).
    Raises :class:`~reparam.rewrite.RefuseFold` (before touching the graph) when
    something may change ``source`` in place between those reads and the new one,
    when a metadata read of a folded node cannot move, or when a folded weight
    would overflow the dtype: Inf is never written.
    """
    first, last = min(readers, key=lambda r: r.pos), max(readers, key=lambda r: r.pos)
    mutator = graph.mutation_between(source, first.pos, last.pos)
    if mutator is not None:
        raise RefuseFold(Refusal("effects", f"{mutator} may change {source.name} in place "
                                            f"between its reads by {first.name} and "
                                            f"{last.name}"))
    for node, same_shape in folded:
        blocker = graph.meta_blocker(node, type, same_shape)
        if blocker is not None:
            raise RefuseFold(Refusal("shared", f"{blocker.name} reads the metadata of "
                                               f"{node.name}, which the folded layer does not "
                                               "have"))
    dtype = type.dtype if type is not None else None
    limit = DTYPE_MAX.get(dtype)
    largest = max(_abs_max(a) for a in arrays)
    if limit is not None and not largest <= limit:  # also catches NaN
        raise RefuseFold(Refusal("overflow", f"folded weights of {like.name} overflow {dtype} "
                                             f"(largest magnitude {largest:.3g})", warn=True))
    new = graph.add(op, [source], attrs, name=like.name, before=graph.earliest(readers),
                    type=type)
    for node, _ in folded:
        graph.move_meta(node, new)
    return new
