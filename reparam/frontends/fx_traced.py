"""A traced model as the torch.fx frontend reads it: the fx graph and the module traced.

torch.fx wraps a trace in a GraphModule by copying every module and attribute its
graph names into a new module tree: a tenth of the time of ``fuse`` on a large
model, and thousands of objects for the garbage collector, for a module that the
frontend only reads. :class:`Traced` reads the graph's dotted paths in the traced
module itself, and says how such a GraphModule would hold each one
(:meth:`Traced.held`), since that is what the fused GraphModule keeps: a plain
tensor attribute that the graph reads becomes a buffer there.
"""
from __future__ import annotations

import torch
from torch import fx, nn


class Traced:
    """``graph``, traced from ``root``. ``rebuilt``: a GraphModule of ``graph`` would be made
    from ``root`` (False where ``root`` is a GraphModule used as it is).

    The graph's targets are looked up once, here (as a GraphModule would copy them): the
    frontend never changes what ``root`` holds, and what it reads through this object
    stays what was traced while the shape propagation swaps tensors in and out of modules.
    """

    def __init__(self, root: nn.Module, graph: fx.Graph, rebuilt: bool = True):
        self.root, self.graph, self.rebuilt = root, graph, rebuilt
        #: the dotted paths the graph reads (call_module and get_attr targets)
        self.targets = {n.target for n in graph.nodes if n.op in ("call_module", "get_attr")}
        self._found = {target: self._lookup(target) for target in self.targets}
        self._held: dict = {}
        self._modules: list | None = None
        self._tensors: list | None = None

    def _lookup(self, target: str):
        found = self.root
        for part in target.split("."):
            found = getattr(found, part)
        return found

    def fetch(self, target: str):
        """The object at dotted path ``target`` of ``root`` (as ``Interpreter.fetch_attr``
        finds it), looked up once."""
        if target not in self._found:
            self._found[target] = self._lookup(target)
        return self._found[target]

    def _within_target(self, target: str) -> bool:
        """Whether a proper prefix of ``target`` is itself a target: a GraphModule then holds
        that object, and reaches ``target`` inside it."""
        parts = target.split(".")
        return any(".".join(parts[:k]) in self.targets for k in range(1, len(parts)))

    def held(self, target: str) -> tuple[object, str]:
        """The object at ``target`` and how a GraphModule of the graph holds it: as a
        ``"module"``, a ``"parameter"``, a ``"buffer"``, a ``"non-persistent buffer"`` or a
        plain ``"attribute"``. (torch.fx copies each target into the GraphModule, a tensor
        that is not a parameter as a buffer, unless the object holding it is a target too.)"""
        if target not in self._held:
            self._held[target] = self._holding(target)
        return self._held[target]

    def _holding(self, target: str) -> tuple[object, str]:
        path, _, leaf = target.rpartition(".")
        owner = self.fetch(path) if path else self.root
        value = self.fetch(target)
        if isinstance(value, nn.Module):
            return value, "module"
        if leaf in owner._parameters:
            return value, "parameter"
        if leaf in owner._buffers:
            persistent = leaf not in owner._non_persistent_buffers_set
            return value, "buffer" if persistent else "non-persistent buffer"
        if self.rebuilt and isinstance(value, torch.Tensor) and not self._within_target(target):
            return value, "parameter" if isinstance(value, nn.Parameter) else "buffer"
        return value, "attribute"

    def modules(self) -> list[nn.Module]:
        """The modules of a GraphModule of the graph (or of the GraphModule ``root``) that
        hold parameters and buffers: those its targets name, and theirs (each once)."""
        if self._modules is None:
            if not self.rebuilt:
                self._modules = list(self.root.modules())
            else:
                found: dict = {}
                for target in self.targets:
                    value = self.fetch(target)
                    if isinstance(value, nn.Module):
                        found.update((id(m), m) for m in value.modules())
                self._modules = list(found.values())
        return self._modules

    def tensors(self) -> list[torch.Tensor]:
        """The parameters and buffers a GraphModule of the graph (or the GraphModule ``root``)
        holds."""
        if self._tensors is None:
            if not self.rebuilt:
                self._tensors = list(self.root.parameters()) + list(self.root.buffers())
            else:
                self._tensors = [t for m in self.modules() for table in (m._parameters, m._buffers)
                                 for t in table.values() if t is not None]
                for target in self.targets:
                    value, kind = self.held(target)
                    if kind not in ("module", "attribute") and isinstance(value, torch.Tensor):
                        self._tensors.append(value)
        return self._tensors
