"""An Add of parallel linear branches on one input -> one conv."""
from __future__ import annotations

from reparam import kernel
from reparam.cost import add_cost, conv_cost, guard, Cost
from reparam.kernel import Refusal
from reparam.rewrite import rule

from .common import add_leaves, conv_kernel, is_inner_add, new_conv, other_users


def branch_groups(leaves):
    """Group Add operands by the tensor ``X`` they are linear branches of.

    An operand that some conv operand reads is ``X`` itself: an identity branch
    of ``X``. Any other conv operand is a branch of its input. Returns
    ``{X: [operand, ...]}`` in operand order.
    """
    sources = {leaf.inputs[0] for leaf in leaves if leaf.op == "conv"}
    groups: dict = {}
    for leaf in leaves:
        if leaf in sources:
            groups.setdefault(leaf, []).append(leaf)
        elif leaf.op == "conv":
            groups.setdefault(leaf.inputs[0], []).append(leaf)
    return groups


def _nonlinear_branch(leaf, sources, depth: int = 4):
    """Name of the first opaque node on ``leaf``'s path up to one of ``sources``, if any."""
    node, opaque = leaf, None
    for _ in range(depth):
        if not node.inputs:
            return None
        if node.op not in ("conv", "bn", "add", "identity") and opaque is None:
            opaque = node
        node = node.inputs[0]
        if node in sources and opaque is not None:
            return opaque
    return None


def _merge(source, members, root):
    """Kernels of one group, merged; or why not."""
    kernels, replaced = [], Cost()
    for m in members:
        if m is source:
            continue
        k = conv_kernel(m)
        if not k:
            return k
        if len(m.users) > 1:
            return Refusal(f"branch {m.name} output is also read by {', '.join(other_users(m, root))}")
        kernels.append(k)
        replaced += conv_cost(k)
    ident = [kernel.identity(kernels[0].in_channels, ndim=kernels[0].ndim)
             for m in members if m is source]
    merged = kernel.add(*kernels, *ident)
    if not merged:
        return merged
    too_costly = guard(conv_cost(merged), replaced + add_cost(merged.out_channels, len(members)))
    return merged if too_costly is None else too_costly


@rule("add")
def merge_parallel_branches(graph, add):
    """Add of branches ``conv_i(X)`` and ``X`` (flattened Add trees) -> ``conv(X)``.

    Kernels are summed by :func:`reparam.kernel.add` (aligned centres, mixed
    sizes, groups expanded to their gcd): exact when strides and reaches agree.
    Refused when a branch conv's output is read outside the Add, when a
    branch passes through a non-linear op, or when the merged conv would cost
    more than the branches and Adds it replaces.
    """
    if is_inner_add(add):
        return None
    leaves = add_leaves(add)
    groups = branch_groups(leaves)
    refusal = None
    for source, members in groups.items():
        if len(members) < 2:
            continue
        merged = _merge(source, members, add)
        if not merged:
            refusal = refusal or merged
            continue
        main = max((m for m in members if m is not source),
                   key=lambda m: conv_cost(m.attrs["kernel"]).macs)
        node = new_conv(graph, source, merged, main, before=add)
        rest = [node] + [leaf for leaf in leaves if leaf not in members]
        graph.replace(add, rest[0] if len(rest) == 1 else
                      graph.add("add", rest, name=add.name, before=add))
        return True
    for leaf in leaves:
        opaque = _nonlinear_branch(leaf, set(groups) | set(leaves))
        if opaque is not None:
            return Refusal(f"branch through {opaque.name} ({opaque.op}) is not linear")
    return refusal
