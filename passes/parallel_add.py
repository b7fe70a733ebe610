"""A weighted sum of parallel linear branches on one input -> one conv."""
from __future__ import annotations

import math
from dataclasses import dataclass

from reparam import kernel
from reparam.cost import Cost, add_cost, conv_cost, guard
from reparam.ir import PURE_OPS, Node
from reparam.kernel import Conv, Refusal
from reparam.rewrite import rule

from .common import (add_coeffs, add_tree, combined_terms, conv_kernel, is_inner_add,
                     moved_read_mutator, new_conv, node_cost, other_users, runs_per_output)


@dataclass
class Branch:
    """One Add operand as ``coeff * kernel(source)``; ``kernel`` None for ``source`` itself."""

    leaf: Node
    coeff: float
    source: Node
    kernel: Conv | None = None
    cost: Cost = Cost()
    chain: tuple = ()  # the convs composed into ``kernel``, ``leaf`` last


def conv_chain(leaf: Node) -> Branch | Refusal:
    """``leaf``, a conv, as one kernel of the farthest input it reaches through convs
    that nothing else reads, composing kernels while that is exact
    (:func:`reparam.kernel.compose`). Its cost counts each conv of the chain
    as often as it runs, at least, per output position of ``leaf``
    (:func:`~.common.runs_per_output`); zero pads are free.
    """
    k = conv_kernel(leaf)
    if not k:
        return k
    cost, source, chain = node_cost(leaf, k), leaf.inputs[0], [leaf]
    while source.op == "conv" and len(source.data_users) == 1:
        a = conv_kernel(source)
        composed = kernel.compose(a, k) if a else a
        if not composed:
            break
        ca = node_cost(source, a)
        cost = Cost(math.floor(ca.macs * runs_per_output(k)), ca.params) + cost
        chain.insert(0, source)
        k, source = composed, source.inputs[0]
    return Branch(leaf, 1.0, source, k, cost, tuple(chain))


def branch_groups(terms) -> dict:
    """Group the ``(operand, coefficient)`` terms of a sum by the tensor ``X`` they read.

    Conv operands are branches of the input their chain reaches (:func:`conv_chain`);
    an operand that is such an input is ``X`` itself, an identity branch.
    Returns ``{X: [Branch | Refusal, ...]}`` in operand order.
    """
    chains = {id(n): conv_chain(n) for n, _ in terms if n.op == "conv"}
    roots = {b.source for b in chains.values() if b}
    groups: dict = {}
    for n, c in terms:
        if n in roots:
            groups.setdefault(n, []).append(Branch(n, c, n))
        elif n.op == "conv":
            b = chains[id(n)]
            groups.setdefault(b.source if b else n.inputs[0], []).append(
                Branch(n, c, b.source, b.kernel, b.cost, b.chain) if b else b)
    return groups


def _nonlinear_branch(leaf, sources, depth: int = 4):
    """The first opaque node on ``leaf``'s path up to one of ``sources``, if any."""
    node, opaque = leaf, None
    for _ in range(depth):
        if not node.inputs:
            return None
        if node.op not in PURE_OPS and opaque is None:
            opaque = node
        node = node.inputs[0]
        if node in sources and opaque is not None:
            return opaque
    return None


def _merge(branches, tree, multiplies: int) -> Conv | Refusal:
    """One conv for a group of branches on one input (summed by the Adds ``tree``); or why
    not. ``multiplies``: how many more terms the sum left beside it scales than ``tree`` did
    (a coefficient of a sub-sum is one multiply, and one per term once the sum is flat)."""
    for b in branches:
        if not b:
            return b
        outside = other_users(b.leaf, *tree)
        if b.kernel is not None and outside:
            return Refusal("shared", f"branch {b.leaf.name} output is also read by "
                                     f"{', '.join(outside)}")
    convs = [b.kernel for b in branches if b.kernel is not None]
    kernels = [b.kernel or kernel.identity(convs[0].in_channels, ndim=convs[0].ndim)
               for b in branches]
    merged = kernel.add(*(k if b.coeff == 1 else kernel.scale(k, b.coeff)
                          for k, b in zip(kernels, branches)))
    if not merged:
        return merged
    replaced = sum((b.cost for b in branches), Cost()) + add_cost(merged.out_channels, len(branches))
    too_costly = guard(conv_cost(merged) + Cost(merged.out_channels * multiplies, 0), replaced)
    return merged if too_costly is None else too_costly


@rule("add")
def merge_parallel_branches(graph, add):
    """Weighted sum (flattened Add/Sub trees) of conv branches of ``X`` and ``X`` -> ``conv(X)``.

    A branch is a conv, or a chain of convs nothing else reads, composed into one
    kernel. Kernels, each times its coefficient, are summed by
    :func:`reparam.kernel.add` (aligned centres, mixed sizes, groups and
    dilations brought to their gcd): exact when strides and reaches agree.
    Refused when a branch's output is read outside the sum, when a branch
    passes through a non-linear op, when the merged conv would cost more
    than the branches and Adds it replaces, or when flattening the tree would
    move a read past an in-place change (:func:`~.common.moved_read_mutator`).
    """
    if is_inner_add(add):
        return None
    terms, tree = combined_terms(add), add_tree(add)
    groups = branch_groups(terms)
    refusal = None
    for source, branches in groups.items():
        if len(branches) < 2 or all(b and b.kernel is None for b in branches):
            continue
        members = {id(b.leaf) for b in branches if b}  # (a refused branch: _merge says why)
        multiplies = sum(abs(c) != 1 for n, c in terms if id(n) not in members) \
            - sum(abs(c) != 1 for a in tree for c in add_coeffs(a))
        merged = _merge(branches, tree, multiplies)
        if not merged:
            refusal = refusal or merged
            continue
        mutator = moved_read_mutator(graph, add)
        if mutator is not None:
            return Refusal("effects", mutator)
        main = max((b for b in branches if b.kernel is not None), key=lambda b: b.cost.macs).leaf
        readers = [n for b in branches for n in b.chain] + [add]
        folded = [(n, n is b.leaf) for b in branches for n in b.chain]
        rest = [(new_conv(graph, source, merged, main, readers=readers,
                          type=main.type, folded=folded), 1.0)]
        rest += [t for t in terms if id(t[0]) not in members]
        if len(rest) == 1:
            graph.replace(add, rest[0][0])
        else:
            coeffs = tuple(c for _, c in rest)
            attrs = {"coeffs": coeffs} if any(c != 1 for c in coeffs) else {}
            graph.replace(add, graph.add("add", [n for n, _ in rest], attrs, add.name, before=add,
                                         type=add.type))
        return True
    leaves = [n for n, _ in terms]
    for leaf in leaves:
        opaque = _nonlinear_branch(leaf, set(groups) | set(leaves))
        if opaque is not None:
            return Refusal("nonlinear", f"branch through {opaque.name} ({opaque.label}) is not "
                                        "linear")
    return refusal
