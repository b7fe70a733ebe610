"""Lifting for the ONNX frontend: the IR of an ONNX model.

Lifting imports the graph with onnx-graphsurgeon after ONNX shape inference
(so every tensor has the rank and static sizes the model allows) and makes one
IR node per ONNX node, in the file's order:

=====================  ========================================================
ONNX                   IR
=====================  ========================================================
Conv                   ``conv`` (weight and bias constant; any groups, dilation,
                       explicit pads, ``auto_pad`` NOTSET/VALID/SAME_*)
Gemm, MatMul           ``conv`` without spatial dimensions (a linear layer): on an
                       ``(N, K)`` input, ``B`` (and Gemm's ``C``) constant
BatchNormalization     ``bn`` (inference form; ``ndim`` = input rank - 2)
Add, Sum               ``add`` (every operand a computed tensor of one shape; a
                       one-input Sum is an ``identity``)
Add/Sub/Mul/Div by a   ``bn`` with mean 0, var 1, eps 0 (``y = weight*x + bias``
per-channel constant,  exactly): a layer scale or shift, a negation
Neg
ConvTranspose          ``conv_transpose`` (weight and bias constant, explicit pads)
Identity, Dropout      ``identity`` (Dropout: inference, no mask read, no
                       ``training_mode`` input)
Pad (constant 0)       ``conv``: identity kernel with the padding
AveragePool            ``conv``: :func:`reparam.kernel.avgpool`
anything else          opaque (``op`` is the op type)
=====================  ========================================================

"Constant" means an initializer, a ``Constant`` node, or a small subgraph of
those (plus ``Shape``/``CastLike`` of tensors whose shape/type is static), as
the torch.export exporter writes conv biases. A lifted Conv holds its weight as
read (a float32 or float16 one as it is, for a light model a read-only view of
the file, see :class:`reparam.kernel.Conv`; others as float64 copies): nothing
changes a weight in place, so kernels that share one never see each other's
folds. Operands that are computed tensors become IR inputs; constants do not.
A node with several outputs is one opaque IR node plus one opaque projection
node per output, so only single-output nodes can ever be folded.

Every IR node lifted from an ONNX node has ``origin`` = :class:`NodeOrigin`
(its index in the graph and which input slots are IR inputs), the graph inputs
and the projections of multi-output nodes :class:`TensorOrigin`, and the sink
reading the graph outputs :class:`OutputsOrigin`: what
:mod:`reparam.frontends.onnx_lower` needs to write the model back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from .. import kernel
from ..errors import BadInputError
from ..ir import OPAQUE, Graph, Node, SharedWeight, TensorType
from ..kernel import Conv, Refusal
from . import onnx_file
from .onnx_check import check_bn_params, first_line
from .onnx_file import copy_fields

#: initializers at most this many bytes keep their data in the copy used for shape inference
SMALL_INITIALIZER = 4096

_NP_FLOAT = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64,
             TensorProto.FLOAT16: np.float16}


# --- origins ----------------------------------------------------------------------

@dataclass(frozen=True)
class NodeOrigin:
    """IR node lifted from ``graph.node[index]``; ``slots[i]`` is the ONNX input slot
    (an int) or outer-scope name read by a subgraph (a str) of IR input ``i``."""

    index: int
    slots: tuple


@dataclass(frozen=True)
class TensorOrigin:
    """A graph input, or one output of a multi-output node."""

    name: str


@dataclass(frozen=True)
class OutputsOrigin:
    """The sink reading every graph output (so that nothing they need is ever removed)."""

    names: tuple


# --- shape inference on a copy without the big tensors ----------------------------------
def _light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its large initializers replaced by (unread) external references, and
    without its value_info and the shapes of its outputs: what a file declares there may be
    stale (e.g. a static size where the graph takes any), and inference would keep it."""
    light = onnx.ModelProto()
    copy_fields(model, light, skip=("graph",))
    copy_fields(model.graph, light.graph, skip=("initializer", "value_info"))
    for o in light.graph.output:
        if o.type.HasField("tensor_type"):
            o.type.tensor_type.ClearField("shape")
    for t in model.graph.initializer:
        if onnx_file.tensor_size(t) <= SMALL_INITIALIZER or t.data_location == TensorProto.EXTERNAL:
            light.graph.initializer.append(t)
            continue
        s = light.graph.initializer.add()
        s.name, s.data_type = t.name, t.data_type
        s.dims.extend(t.dims)
        s.data_location = TensorProto.EXTERNAL
        e = s.external_data.add()
        e.key, e.value = "location", "__reparam_shape_inference_only__"
    return light


def infer_value_info(model: onnx.ModelProto, outputs: bool = False):
    """Value infos from ONNX shape inference (None when inference fails); with
    ``outputs``, those of the graph outputs (as inferred) are appended."""
    try:
        inferred = onnx.shape_inference.infer_shapes(_light_copy(model), data_prop=True)
    except Exception:
        return None
    return list(inferred.graph.value_info) + (list(inferred.graph.output) if outputs else [])


#: ops whose output has the channels of their first input
_SAME_CHANNELS = frozenset({"BatchNormalization", "AveragePool", "MaxPool", "Relu", "Identity",
                            "Pad", "Sigmoid", "Clip", "LeakyRelu", "HardSigmoid", "HardSwish"})


# --- constants --------------------------------------------------------------------------

_EVALUABLE = frozenset({
    "Constant", "Shape", "Size", "CastLike", "Cast", "Expand", "Reshape", "Unsqueeze",
    "Squeeze", "Concat", "Identity", "Gather", "Slice", "ConstantOfShape", "Transpose",
    "Mul", "Add", "Sub", "Div", "Neg", "Sqrt", "Reciprocal", "Range", "Tile", "Flatten"})


def overridable(graph) -> set[str]:
    """Initializers that are also graph inputs: defaults a caller may replace, not constants."""
    return {i.name for i in graph.input} & {t.name for t in graph.initializer}


class _Constants:
    """Values of tensors computable from constants alone (cached)."""

    def __init__(self, model: onnx.ModelProto, types: dict):
        self.model = model
        inputs = {i.name for i in model.graph.input}
        self.inits = {t.name: t for t in model.graph.initializer if t.name not in inputs}
        self.producer = {o: n for n in model.graph.node for o in n.output if o}
        self.types = types  # name -> (elem_type, dims)
        self.cache: dict[str, np.ndarray | None] = {}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)

    def get(self, name: str, depth: int = 0) -> np.ndarray | None:
        if name in self.cache:
            return self.cache[name]
        value = None
        if name in self.inits:
            t = self.inits[name]
            try:
                value = onnx_file.read(t) if onnx_file.is_lazy(t) else numpy_helper.to_array(t)
            except Exception as e:
                raise BadInputError(f"cannot read initializer {name!r}: {first_line(e)}") from e
            if value.nbytes > SMALL_INITIALIZER:  # a weight: read again if asked again, not
                # held all lift long
                return value
        elif name in self.producer and depth < 64:
            value = self._evaluate(self.producer[name], name, depth)
        self.cache[name] = value
        return value

    def _evaluate(self, node, name, depth):
        if node.domain not in ("", "ai.onnx") or node.op_type not in _EVALUABLE:
            return None
        feeds = {}
        for slot, i in enumerate(node.input):
            if not i:
                continue
            v = self.get(i, depth + 1)
            if v is None and (node.op_type in ("Shape", "Size") and slot == 0
                              or node.op_type == "CastLike" and slot == 1):
                elem, dims = self.types.get(i, (0, None))
                np_t = _NP_FLOAT.get(elem)
                if np_t is None:
                    try:
                        np_t = helper.tensor_dtype_to_np_dtype(elem)
                    except Exception:
                        return None
                if node.op_type == "CastLike":
                    v = np.empty((0,), np_t)
                elif dims is not None and all(isinstance(d, int) and d >= 0 for d in dims):
                    v = np.lib.stride_tricks.as_strided(np.zeros(1, np_t), dims, [0] * len(dims))
            if v is None:
                return None
            feeds[i] = v
        try:
            from onnx.reference import ReferenceEvaluator
            results = ReferenceEvaluator(node, opsets={"": self.opset}).run(None, feeds)
        except Exception:
            return None
        for o, r in zip(node.output, results):
            self.cache[o] = np.asarray(r)
        return self.cache.get(name)


# --- lifting ------------------------------------------------------------------------------

def value_dims(vi) -> tuple:
    """Dims of a value info: ints, dim_param strings, or None where unknown; None if no rank."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in t.shape.dim)


def _known(dims) -> int:
    """How much ``dims`` says: -1 without a rank, else the number of known sizes (and the rank)."""
    if dims is None:
        return -1
    return 1 + sum(d is not None for d in dims)


def _same_shape(a, b) -> bool:
    """Could tensors of dims ``a`` and ``b`` have equal shapes (no broadcasting)?"""
    if a is None or b is None:
        return a is b is None
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, int) and isinstance(y, int):
            if x != y:
                return False
        elif x == 1 or y == 1:  # a static 1 beside an unknown size: likely broadcasting
            return False
    return True


def _outer_names(graph_proto) -> set[str]:
    """Names a subgraph reads from enclosing scopes."""
    defined = {i.name for i in graph_proto.input} | {t.name for t in graph_proto.initializer}
    used = set()
    for n in graph_proto.node:
        used.update(i for i in n.input if i and i not in defined)
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                used |= _outer_names(sub) - defined
        defined.update(n.output)
    return used


def implicit_inputs(node) -> list[str]:
    names = set()
    for a in node.attribute:
        for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
            names |= _outer_names(sub)
    return sorted(names)


class LiftedGraph(Graph):
    """The IR of an ONNX graph, remembering which node's value each replaced node's value
    now is (``replaced[old] = new``): the values a rewrite recomputes, which the check
    compares (see :func:`reparam.frontends.onnx_lower.lower`)."""

    def __init__(self):
        super().__init__()
        self.replaced: dict[Node, Node] = {}

    def replace(self, old: Node, new: Node) -> None:
        self.replaced[old] = new
        super().replace(old, new)
        if not old.alive:  # kept for its name and origin only: its weights may go
            old.attrs.clear()
            old.inputs = []

    def now(self, node: Node) -> Node:
        """The node computing ``node``'s value after the rewrites."""
        while node in self.replaced:
            node = self.replaced[node]
        return node


class Lifted:
    """Everything lowering needs besides the IR: the original model and lifting notes."""

    def __init__(self, model, graph, sink, notes):
        self.model = model
        self.graph = graph
        self.sink = sink
        self.notes = notes


class _Lifter:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        value_info = infer_value_info(model, outputs=True)
        self.notes: list[str] = []
        if value_info is None:
            self.notes.append("note: ONNX shape inference failed on the input; nodes whose rank "
                              "or channels are unknown are kept as they are")
            value_info = []
        self.types = {}
        g = model.graph
        for vi in list(g.input) + value_info:
            if not vi.type.HasField("tensor_type"):
                continue
            new = (vi.type.tensor_type.elem_type, value_dims(vi))
            old = self.types.get(vi.name)
            if old is None or _known(new[1]) > _known(old[1]):  # keep the most informative
                self.types[vi.name] = (new[0] or old[0], new[1]) if old else new
        for vi in g.value_info:  # what the file declares may be stale: only where inference
            dims = value_dims(vi)     # found no rank, and no more than rank and channels
            if vi.type.HasField("tensor_type") and dims is not None \
                    and self.dims(vi.name) is None:
                dims = tuple(d if k == 1 else None for k, d in enumerate(dims))
                self.types[vi.name] = (self.elem(vi.name) or vi.type.tensor_type.elem_type, dims)
        for t in g.initializer:
            self.types.setdefault(t.name, (t.data_type, tuple(t.dims)))
        self.consts = _Constants(model, self.types)
        self._leaf_reads: dict | None = None  # see _shared_weight
        self._shared: dict[str, SharedWeight] = {}
        self._propagate_channels(g)
        # onnx-graphsurgeon view of the same graph, for attributes and tensor metadata
        declared = {v.name for v in g.value_info} | {v.name for v in g.output}
        added = [vi for vi in value_info if vi.name not in declared]
        n0 = len(g.value_info)
        g.value_info.extend(added)
        try:
            self.gs_graph = gs.import_onnx(model)
        except Exception as e:
            raise BadInputError(f"cannot import the graph: {first_line(e)}") from e
        finally:
            del g.value_info[n0:]
        if len(self.gs_graph.nodes) != len(g.node):
            raise BadInputError("cannot import the graph: onnx-graphsurgeon saw a different node list")

    def _propagate_channels(self, g) -> None:
        """Fill in channel counts that shape inference left unknown.

        A Pad whose pads are computed by a subgraph (as torch exports it) hides
        every size of its output from ONNX shape inference; but ops that keep
        their input's channels (zero channel padding included) pass them on.
        """
        for node in g.node:
            if node.op_type not in _SAME_CHANNELS or not node.input or not node.output:
                continue
            src, out = self.dims(node.input[0]), node.output[0]
            c = self.channels(node.input[0])
            if c is None or self.channels(out) is not None:
                continue
            if node.op_type == "Pad":
                pads = self.const(node.input[1]) if len(node.input) > 1 else None
                if pads is None or len(node.input) > 3 and node.input[3]:
                    continue  # unknown pads, or pads on chosen axes
                pads = pads.reshape(-1)
                if len(pads) != 2 * len(src) or pads[1] or pads[1 + len(src)]:
                    continue
            old = self.dims(out)
            dims = list(old) if old is not None and len(old) == len(src) else [None] * len(src)
            dims[1] = c
            self.types[out] = (self.elem(out) or self.elem(node.input[0]), tuple(dims))

    # helpers -------------------------------------------------------------------
    def elem(self, name):
        return self.types.get(name, (0, None))[0]

    def dims(self, name):
        return self.types.get(name, (0, None))[1]

    def channels(self, name) -> int | None:
        d = self.dims(name)
        return d[1] if d is not None and len(d) >= 2 and isinstance(d[1], int) and d[1] > 0 else None

    def ir_type(self, name) -> TensorType | None:
        """The IR type of tensor ``name`` (a dim_param or unknown size is dynamic)."""
        elem, dims = self.types.get(name, (0, None))
        try:
            dtype = helper.tensor_dtype_to_np_dtype(elem).name if elem else None
        except Exception:  # e.g. bfloat16 or float8, which numpy has no dtype for
            dtype = {TensorProto.BFLOAT16: "bfloat16"}.get(elem, f"onnx:{elem}")
        if dtype is None:
            return None
        shape = None if dims is None else tuple(d if isinstance(d, int) else None for d in dims)
        return TensorType(dtype, shape)

    def const(self, name):
        return self.consts.get(name) if name else None

    # per-op classification: (op, attrs, slots) or None for opaque ------------------------
    def classify(self, gnode, node, computed):
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            return None
        outs = [o for o in node.output if o]
        if op == "BatchNormalization":
            return self._bn(gnode, node, computed, outs)
        if op == "Dropout" and len(node.output) == 1 and node.output[0] and not any(node.input[2:]):
            return self._identity(gnode, node, computed)  # inference: y = x (no mask read)
        if len(node.output) != 1:
            return None
        fn = getattr(self, "_" + op.lower(), None) if op in (
            "Conv", "Add", "Sum", "Sub", "Mul", "Div", "Neg", "Identity", "Pad", "AveragePool",
            "Gemm", "MatMul", "ConvTranspose") else None
        return fn(gnode, node, computed) if fn else None

    def _keep(self, node, why):
        self.notes.append(f"note: kept {node.op_type} {node.name or node.output[0]!r} as it is: {why}")
        return None

    def _float_dtype(self, name):
        return _NP_FLOAT.get(self.elem(name))

    def _conv(self, gnode, node, computed):
        x, w = node.input[0], node.input[1]
        b = node.input[2] if len(node.input) > 2 else ""
        if x not in computed:
            return None
        wv, bv = self.const(w), self.const(b) if b else None
        if wv is None or (b and bv is None):
            return self._keep(node, "weight or bias is not a constant")
        dtype = self._float_dtype(x)
        if dtype is None or wv.dtype.kind != "f" or wv.ndim < 3:
            return self._keep(node, "not a floating-point convolution")
        nd = wv.ndim - 2
        a = gnode.attrs
        stride = tuple(a.get("strides", [1] * nd))
        dil = tuple(a.get("dilations", [1] * nd))
        ks = tuple(wv.shape[2:])
        if tuple(a.get("kernel_shape", ks)) != ks:
            raise BadInputError(f"Conv {node.name!r}: kernel_shape {a['kernel_shape']} does not "
                                f"match its weight of shape {wv.shape}")
        group = int(a.get("group", 1))
        if 0 in wv.shape:
            raise BadInputError(f"Conv {node.name!r}: weight of shape {tuple(wv.shape)} has a "
                                "zero-size dimension")
        chans = self.channels(x)
        if chans is not None and wv.shape[1] * group != chans:
            raise BadInputError(f"Conv {node.name!r}: weight of shape {tuple(wv.shape)} with "
                                f"group={group} reads {wv.shape[1] * group} input channels, but its "
                                f"input has {chans}")
        pads = self._pads(node, a, nd, ks, stride, dil, x)
        if isinstance(pads, str):
            return self._keep(node, pads)
        bias = np.zeros(wv.shape[0]) if bv is None else np.array(bv, dtype=np.float64).reshape(-1)
        try:
            conv = Conv(wv, bias, stride, pads, dil, group)  # float32/16 as read (see Conv)
        except ValueError as e:
            raise BadInputError(f"Conv {node.name!r}: {e}") from e
        return "conv", {"kernel": conv}, (0,)

    def _gemm(self, gnode, node, computed):
        """``alpha * A @ op(B) + beta * C`` on an ``(N, K)`` input with constant ``B`` and ``C``:
        a linear layer (a conv without spatial dimensions)."""
        a = gnode.attrs
        x = node.input[0]
        b = node.input[2] if len(node.input) > 2 else ""
        wv, bv = self.const(node.input[1]), self.const(b) if b else None
        if x not in computed or a.get("transA", 0) or wv is None or (b and bv is None):
            return None
        if wv.ndim != 2 or wv.dtype.kind != "f" or self._float_dtype(x) is None:
            return None
        w = np.array(wv, dtype=np.float64) * float(a.get("alpha", 1.0))
        w = w if a.get("transB", 0) else w.T
        bias = np.zeros(w.shape[0])
        if bv is not None:
            if bv.size not in (1, w.shape[0]) or bv.ndim > 2 or bv.ndim == 2 and bv.shape[0] != 1:
                return None  # a bias per row (or of another size): not a linear layer's
            bias = np.broadcast_to(np.asarray(bv, np.float64).reshape(-1), w.shape[:1]) \
                * float(a.get("beta", 1.0))
        return self._linear(x, w, bias)

    def _matmul(self, gnode, node, computed):
        x, wv = node.input[0], self.const(node.input[1])
        if x not in computed or wv is None or wv.ndim != 2 or wv.dtype.kind != "f" \
                or self._float_dtype(x) is None:
            return None
        return self._linear(x, np.array(wv, dtype=np.float64).T, np.zeros(wv.shape[1]))

    def _linear(self, x, weight, bias):
        dims = self.dims(x)
        if dims is None or len(dims) != 2 or self.channels(x) != weight.shape[1]:
            return None
        return "conv", {"kernel": Conv(weight, bias.copy(), (), (), ())}, (0,)

    def _pads(self, node, a, nd, ks, stride, dil, x):
        auto = a.get("auto_pad", "NOTSET") or "NOTSET"
        if auto == "NOTSET":
            p = list(a.get("pads", [0] * 2 * nd))
            return tuple(zip(p[:nd], p[nd:]))
        if auto == "VALID":
            return ((0, 0),) * nd
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            return f"unknown auto_pad {auto!r}"
        dims = self.dims(x)
        pads = []
        for k in range(nd):
            s, d, kk = stride[k], dil[k], ks[k]
            if s == 1:
                total = d * (kk - 1)
            else:
                size = dims[2 + k] if dims is not None and len(dims) == nd + 2 else None
                if not isinstance(size, int):
                    return (f"auto_pad={auto} with stride {s} pads by an amount that depends on "
                            "the input size, which is not static")
                total = max((math.ceil(size / s) - 1) * s + d * (kk - 1) + 1 - size, 0)
            half = total // 2
            pads.append((half, total - half) if auto == "SAME_UPPER" else (total - half, half))
        return tuple(pads)

    def _bn(self, gnode, node, computed, outs):
        label = node.name or node.output[0]
        if gnode.attrs.get("training_mode", 0) or len(outs) > 1:
            raise BadInputError(f"BatchNormalization {label!r} is in training mode (it normalises "
                                "with batch statistics); export the model in eval mode")
        if len(node.output) != 1 or node.input[0] not in computed:
            return None
        x = node.input[0]
        attrs = {"eps": float(gnode.attrs.get("epsilon", np.float32(1e-5)))}  # a float attr
        dtype = self._float_dtype(x)
        params = [self.const(n) for n in node.input[1:5]]
        if len(params) == 4 and all(p is not None for p in params):
            check_bn_params(label, params)
        if len(node.input) < 5 or any(p is None for p in params):
            attrs["refuse"] = Refusal("stats", "BatchNormalization parameters are not constants")
        elif gnode.attrs.get("spatial", 1) == 0:
            attrs["refuse"] = Refusal("unsupported", "BatchNormalization with spatial=0 "
                                                     "normalises every position separately")
        elif dtype is None:
            attrs["refuse"] = Refusal("dtype", "BatchNormalization is not floating-point")
        else:
            c = {np.asarray(p).size for p in params}
            if len(c) != 1:
                attrs["refuse"] = Refusal("stats", "BatchNormalization parameters have "
                                                   "different sizes")
            else:
                for key, p in zip(("weight", "bias", "mean", "var"), params):
                    attrs[key] = np.array(p, dtype=np.float64).reshape(-1)
        return "bn", attrs, (0,)

    def _identity(self, gnode, node, computed):
        return ("identity", {}, (0,)) if node.input[0] in computed else None

    def _sum(self, gnode, node, computed):
        ins = list(node.input)
        if node.op_type == "Sum" and len(ins) == 1:
            return self._identity(gnode, node, computed)
        if len(ins) < 2 or any(i not in computed or self.const(i) is not None for i in ins):
            return None
        dtype = self._float_dtype(ins[0])
        if dtype is None or any(self.elem(i) != self.elem(ins[0]) for i in ins):
            return None
        if not all(_same_shape(self.dims(i), self.dims(ins[0])) for i in ins[1:]):
            return None
        return "add", {}, tuple(range(len(ins)))

    def _add(self, gnode, node, computed):
        lifted = self._sum(gnode, node, computed)
        return lifted if lifted else self._affine(node, computed)

    def _sub(self, gnode, node, computed):
        lifted = self._sum(gnode, node, computed) if len(node.input) == 2 else None
        if lifted:
            op, attrs, slots = lifted
            return op, {**attrs, "coeffs": (1.0, -1.0)}, slots
        return self._affine(node, computed)

    _mul = _div = lambda self, gnode, node, computed: self._affine(node, computed)

    def _neg(self, gnode, node, computed):
        """``-x``: the per-channel affine ``-1 * x + 0``."""
        x = node.input[0]
        chans = self.channels(x)
        if x not in computed or chans is None or self._float_dtype(x) is None:
            return None
        return "bn", {"mean": np.zeros(chans), "var": np.ones(chans), "eps": 0.0,
                      "weight": -np.ones(chans), "bias": np.zeros(chans), "affine": "Neg"}, (0,)

    def _convtranspose(self, gnode, node, computed):
        x, a = node.input[0], gnode.attrs
        b = node.input[2] if len(node.input) > 2 else ""
        wv, bv = self.const(node.input[1]), self.const(b) if b else None
        if x not in computed or wv is None or (b and bv is None) or wv.ndim < 3 \
                or wv.dtype.kind != "f" or self._float_dtype(x) is None:
            return None
        if (a.get("auto_pad", "NOTSET") or "NOTSET") != "NOTSET" or "output_shape" in a:
            return self._keep(node, "a transposed conv sized by auto_pad or output_shape")
        nd, group = wv.ndim - 2, int(a.get("group", 1))
        p = list(a.get("pads", [0] * 2 * nd))
        out_c = wv.shape[1] * group
        bias = np.zeros(out_c) if bv is None else np.array(bv, dtype=np.float64).reshape(-1)
        try:
            ct = kernel.ConvTranspose(np.array(wv, dtype=np.float64, copy=True), bias,
                                      tuple(a.get("strides", [1] * nd)), tuple(zip(p[:nd], p[nd:])),
                                      tuple(a.get("dilations", [1] * nd)),
                                      tuple(a.get("output_padding", [0] * nd)), group)
        except ValueError as e:
            raise BadInputError(f"ConvTranspose {node.name!r}: {e}") from e
        return "conv_transpose", {"kernel": ct}, (0,)

    def _affine(self, node, computed):
        """``x op c`` (or ``c op x`` for Add/Mul/Sub) with ``c`` constant per channel."""
        a, b = node.input[0], node.input[1]
        ca, cb = self.const(a), self.const(b)
        if (ca is None) == (cb is None):
            return None
        slot = 0 if cb is not None else 1
        x, cv = (a, cb) if slot == 0 else (b, ca)
        if x not in computed or node.op_type == "Div" and slot == 1:
            return None
        dtype, chans, dims = self._float_dtype(x), self.channels(x), self.dims(x)
        if dtype is None or chans is None or cv is None or cv.dtype.kind != "f":
            return None
        shape = (1,) * (len(dims) - cv.ndim) + cv.shape if cv.ndim <= len(dims) else None
        if shape is None or any(s != 1 for i, s in enumerate(shape) if i != 1) or shape[1] not in (1, chans):
            return None
        v = np.broadcast_to(np.asarray(cv, dtype=np.float64).reshape(-1), (chans,)).copy()
        one, zero = np.ones(chans), np.zeros(chans)
        if node.op_type == "Div" and np.any(v == 0):
            return None
        if node.op_type == "Div":
            weight, bias = 1.0 / v, zero
        else:
            weight, bias = {"Mul": (v, zero), "Add": (one, v),
                            "Sub": (one, -v) if slot == 0 else (-one, v)}[node.op_type]
        return "bn", {"mean": zero, "var": one, "eps": 0.0, "weight": weight, "bias": bias,
                      "affine": node.op_type}, (slot,)

    def _pad(self, gnode, node, computed):
        x = node.input[0]
        if x not in computed:
            return None
        a = gnode.attrs
        if (a.get("mode", "constant") or "constant") != "constant":
            return None
        dims, chans, dtype = self.dims(x), self.channels(x), self._float_dtype(x)
        if dims is None or chans is None or dtype is None:
            return None
        r = len(dims)
        if "pads" in a:  # opset < 11
            pads, value, axes = list(a["pads"]), float(a.get("value", 0.0)), list(range(r))
        else:
            ins = list(node.input) + [""] * 4
            pv = self.const(ins[1])
            cv = self.const(ins[2]) if ins[2] else np.zeros(1)
            av = self.const(ins[3]) if ins[3] else np.arange(r)
            if pv is None or cv is None or av is None or cv.size != 1:
                return None
            pads, value, axes = [int(p) for p in pv.reshape(-1)], float(cv.reshape(-1)[0]), \
                [int(i) % r for i in av.reshape(-1)]
        if value != 0.0 or len(pads) != 2 * len(axes):
            return None
        full = [(0, 0)] * r
        for i, ax in enumerate(axes):
            full[ax] = (pads[i], pads[i + len(axes)])
        if full[0] != (0, 0) or full[1] != (0, 0) or min(min(p) for p in full) < 0:
            return None
        conv = kernel.identity(chans, ndim=r - 2).replace(pads=tuple(full[2:]))
        return "conv", {"kernel": conv, "pad": True}, (0,)

    def _averagepool(self, gnode, node, computed):
        x = node.input[0]
        if x not in computed:
            return None
        a = gnode.attrs
        chans, dtype = self.channels(x), self._float_dtype(x)
        ks = tuple(a.get("kernel_shape", ()))
        if chans is None or dtype is None or not ks:
            return None
        nd = len(ks)
        if any(d != 1 for d in a.get("dilations", [1] * nd)):
            return self._keep(node, "dilated average pooling")
        stride = tuple(a.get("strides", [1] * nd))
        pads = self._pads(node, a, nd, ks, stride, (1,) * nd, x)
        if isinstance(pads, str):
            return self._keep(node, pads)
        conv = kernel.avgpool(chans, ks, stride, pads, bool(a.get("count_include_pad", 0)),
                              bool(a.get("ceil_mode", 0)))
        if isinstance(conv, Refusal):
            return self._keep(node, conv.reason)
        return "conv", {"kernel": conv, "pool": True}, (0,)

    def _shared_weight(self, node, slots) -> SharedWeight | None:
        """The weight (input 1) of ``node`` as a :class:`~reparam.ir.SharedWeight` when other
        nodes (or graph outputs) read its initializer too, directly or through Identity
        nodes: it stays while they do, so the cost guard does not count it as saved. (Only
        the weight: a bias an exporter shares, such as the all-zero biases of a model's
        linear layers written once, is as small as what a fold saves beside it.)"""
        if self._leaf_reads is None:
            reads: dict[str, int] = {o.name: 1 for o in self.model.graph.output}
            for n in reversed(self.model.graph.node):  # an Identity's reads are its readers'
                if n.op_type in ("Shape", "Size"):  # metadata only (as torch.export computes
                    continue                         # a zero bias from a weight's shape)
                for i in list(n.input) + implicit_inputs(n):
                    reads[i] = reads.get(i, 0) + (reads.get(n.output[0], 0)
                                                  if n.op_type == "Identity" else 1)
            self._leaf_reads = reads
        name = node.input[1] if len(node.input) > 1 and 1 not in slots else ""
        producer = self.consts.producer
        while name in producer and producer[name].op_type == "Identity":
            name = producer[name].input[0]
        t = self.consts.inits.get(name)
        if t is None or self._leaf_reads.get(name, 0) < 2:
            return None
        if name not in self._shared:  # one object for all its readers: each fold uncounts one
            self._shared[name] = SharedWeight(math.prod(t.dims), self._leaf_reads[name])
        return self._shared[name]

    # the whole graph ------------------------------------------------------------------
    def lift(self) -> Lifted:
        g = self.model.graph
        graph = LiftedGraph()
        value_of: dict[str, Node] = {}
        defaults = overridable(g)
        if defaults:
            self.notes.append(
                f"note: {len(defaults)} initializers are also graph inputs (e.g. "
                f"{sorted(defaults)[0]!r}): a caller may feed other values, so they are not "
                "constants and nothing that reads them is folded (export without "
                "keep_initializers_as_inputs to fold them)")
        for i in g.input:  # an initializer listed as an input is an input (see overridable)
            value_of[i.name] = graph.add(OPAQUE, [], {"label": "<input>"}, i.name,
                                         origin=TensorOrigin(i.name), type=self.ir_type(i.name))
        for index, (gnode, node) in enumerate(zip(self.gs_graph.nodes, g.node)):
            label = node.name or (node.output[0] if node.output else node.op_type)
            lifted = self.classify(gnode, node, value_of)
            if lifted is None:
                op = OPAQUE
                slots = tuple(s for s, n in enumerate(node.input) if n in value_of)
                slots += tuple(n for n in implicit_inputs(node) if n in value_of)
                attrs = {"label": node.op_type if node.domain in ("", "ai.onnx")
                         else f"{node.domain}::{node.op_type}"}
            else:
                op, attrs, slots = lifted
                shared = self._shared_weight(node, slots) if op in ("conv", "conv_transpose") \
                    else None
                if shared is not None:
                    attrs["shared"] = shared
            names = [node.input[s] if isinstance(s, int) else s for s in slots]
            origin = NodeOrigin(index, tuple(slots))
            out_type = self.ir_type(node.output[0]) if len(node.output) == 1 else None
            ir = graph.add(op, [value_of[n] for n in names], attrs, label, origin=origin,
                           type=out_type)
            if len(node.output) == 1:
                if node.output[0]:
                    value_of[node.output[0]] = ir
            else:
                for k, out in enumerate(node.output):
                    if out:
                        value_of[out] = graph.add(OPAQUE, [ir], {"label": "<output>", "index": k},
                                                  out, type=self.ir_type(out),
                                                  origin=TensorOrigin(out))
        names = tuple(o.name for o in g.output if o.name in value_of)
        sink = graph.add(OPAQUE, [value_of[n] for n in names], {"label": "<graph outputs>"},
                         "<graph outputs>",
                         origin=OutputsOrigin(names))
        return Lifted(self.model, graph, sink, self.notes)


def lift(model: onnx.ModelProto) -> Lifted:
    """The IR of ``model`` (not modified), with what
    :func:`~reparam.frontends.onnx_lower.lower` needs."""
    return _Lifter(model).lift()
