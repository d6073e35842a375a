"""Layer taps for models that are graphs: a ``torch.export`` program and a TorchScript module.

Forward hooks do not work on either (a ScriptModule refuses them; an exported program has no
sub-module calls left to hook), so a layer here is a *named value of the graph*, and tapping
layers rewrites the graph to return them beside the logits (one rewritten graph per set of
layers, cached). Gradients flow through the rewritten graph as through the original.

Layer names are the user's:

- **module paths**: the value a sub-module returns, named by its path in the original model
  (``"block1.conv"``, ``"fc1"``): ``torch.export`` records it for every op
  (``nn_module_stack``), TorchScript in its inlined call stacks (``getModuleHierarchy``);
- **op names** for what no module returns (functional ``F.relu``, ``torch.flatten``): the op
  and its occurrence, as ``torch.export`` names graph nodes (``"relu"``, ``"relu_1"``,
  ``"max_pool2d"``).

A module path is the last value computed inside the module that is used outside it. A layer's
*input* (``tap(..., inputs=True)``, the pre-activation of a ReLU) is the first input of that
value's op.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from boxhack.errors import BoxhackError

__all__ = ["ExportedModel", "GraphLayer", "GraphModel", "ScriptedModel"]


@dataclass(frozen=True)
class GraphLayer:
    """One tappable value: its name, a type name to show (``"Conv2d"``, ``"relu"``), whether
    it is a ReLU's output, whether it is a module's output, and whether to list it."""

    name: str
    type_name: str
    is_relu: bool
    module: bool
    listed: bool


class GraphModel(nn.Module):
    """Base of the graph models: ``layers`` (name -> :class:`GraphLayer`, in graph order) and
    ``_run(x, wanted)`` -> ``(logits, {(name, inputs): tensor})``. ``tap`` (in
    :mod:`boxhack.models.layers`) registers requests in ``_taps``; ``forward`` fills them."""

    input_shape: tuple[int, ...] | None = None

    def __init__(self) -> None:
        super().__init__()
        self._taps: list[tuple[tuple[str, ...], bool, dict]] = []
        self._cache: dict = {}
        self.layers: dict[str, GraphLayer] = {}

    def layer(self, name: str) -> GraphLayer:
        if name not in self.layers:
            names = [n for n, ly in self.layers.items() if ly.listed]
            raise BoxhackError(f"unknown layer {name!r}; this model's layers are: "
                               f"{', '.join(names) or '(none)'}")  # fmt: skip
        return self.layers[name]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        wanted = tuple(dict.fromkeys((n, inp) for names, inp, _ in self._taps for n in names))
        out, values = self._run(x, wanted)
        for names, inp, store in self._taps:
            for n in names:
                store[n] = values[(n, inp)].flatten(1)
        return out

    def _run(self, x, wanted):  # pragma: no cover - abstract
        raise NotImplementedError

    def _apply(self, fn, *args, **kwargs):
        self._cache = {}  # rewritten graphs hold the old buffers: rebuild them after .to()
        return super()._apply(fn, *args, **kwargs)

    # copies and pickles: the program as its file bytes, no cached graph, no active tap
    def _program_bytes(self) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _from_bytes(cls, data: bytes):  # pragma: no cover - abstract
        raise NotImplementedError

    def __reduce__(self):
        return (type(self)._from_bytes, (self._program_bytes(),), {"training": self.training})

    def __setstate__(self, state):
        self.train(state.get("training", False))

    def __deepcopy__(self, memo):
        new = type(self)._from_bytes(self._program_bytes())
        new.train(self.training)
        memo[id(self)] = new
        return new

    def list_layers(self, example: torch.Tensor) -> list[tuple[str, str, int]]:
        """(name, type, flattened width) of every listed layer, in graph order."""
        names = [n for n, ly in self.layers.items() if ly.listed]
        with torch.no_grad():
            _, values = self._run(example[:1], tuple((n, False) for n in names))
        return [(n, self.layers[n].type_name, int(values[(n, False)][0].numel())) for n in names]


# ------------------------------------------------------------------ torch.export programs
def _module_path(stack_entry) -> str:
    path = str(stack_entry[0])
    return path.removeprefix("L['self'].")


class ExportedModel(GraphModel):
    """A ``torch.export`` program (``ExportedProgram``) as a tappable module. Runs the
    program's ATen graph (``ep.module()``, parameters as attributes) rewritten to return
    the tapped values. A program exported with a fixed batch size runs in chunks of it."""

    def __init__(self, program) -> None:
        super().__init__()
        self._program = program
        gm = program.module()
        self.program = gm
        self._placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(self._placeholders) != 1:
            raise BoxhackError(f"the exported program takes {len(self._placeholders)} inputs; "
                               f"boxhack needs a classifier of one input tensor")  # fmt: skip
        val = self._placeholders[0].meta.get("val")
        shape = tuple(getattr(val, "shape", ()))
        self.static_batch = int(shape[0]) if shape and isinstance(shape[0], int) else None
        if len(shape) > 1 and all(isinstance(s, int) for s in shape[1:]):
            self.input_shape = tuple(int(s) for s in shape[1:])
        self.layers, self._node_of = self._analyse(gm.graph)

    def train(self, mode: bool = True):
        """The program's mode was fixed when it was exported (export in eval mode); only the
        flag changes (an exported module refuses ``train()``)."""
        self.training = bool(mode)
        return self

    def _program_bytes(self) -> bytes:
        import io

        buf = io.BytesIO()
        torch.export.save(self._program, buf)
        return buf.getvalue()

    @classmethod
    def _from_bytes(cls, data: bytes):
        import io

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls(torch.export.load(io.BytesIO(data)))

    @staticmethod
    def _analyse(graph):
        nodes = [n for n in graph.nodes if n.op == "call_function"]

        def paths(n):
            stack = n.meta.get("nn_module_stack") or {}
            return [_module_path(v) for v in stack.values() if _module_path(v)]

        def types(n):
            stack = n.meta.get("nn_module_stack") or {}
            return {_module_path(v): str(v[1]) for v in stack.values()}

        node_of: dict[str, object] = {}
        layers: dict[str, GraphLayer] = {}
        scope = {n: set(paths(n)) for n in nodes}
        all_paths = {p for s in scope.values() for p in s}
        leaves = {p for p in all_paths if not any(q.startswith(p + ".") for q in all_paths)}
        module_out: dict[str, object] = {}
        module_type: dict[str, str] = {}
        for n in nodes:
            for p in scope[n]:
                outside = any(u.op == "output" or p not in scope.get(u, set()) for u in n.users)
                if outside:
                    module_out[p] = n  # the last one in graph order wins
                    module_type[p] = types(n)[p].rsplit(".", 1)[-1].strip("'>")
        for n in nodes:  # graph order, modules at their output node
            for p, out in module_out.items():
                if out is n and p not in layers:
                    layers[p] = GraphLayer(p, module_type[p], module_type[p] == "ReLU", True,
                                           True)  # fmt: skip
                    node_of[p] = n
            if not _is_tensor(n):
                continue
            op = getattr(n.target, "__name__", str(n.target)).split(".")[0]
            in_leaf = bool(scope[n] & leaves)
            if n.name not in layers:
                layers[n.name] = GraphLayer(n.name, op, op in ("relu", "relu_"), False,
                                            not in_leaf)  # fmt: skip
                node_of[n.name] = n
        return layers, {k: v.name for k, v in node_of.items()}

    def _tapped(self, wanted):
        if wanted in self._cache:
            return self._cache[wanted]
        from torch import fx

        old = self.program.graph
        graph = fx.Graph()
        env: dict = {}
        for n in old.nodes:
            if n.op == "output":
                outs = n.args[0]
                logits = outs[0] if isinstance(outs, (tuple, list)) else outs
                extra = []
                for name, inp in wanted:
                    node = next(m for m in old.nodes if m.name == self._node_of[name])
                    src = node.args[0] if inp else node
                    extra.append(env[src])
                graph.output((env[logits], *extra))
            elif n.op == "call_module" and str(n.target).startswith("_guards"):
                continue  # shape guards: the batch is handled by _run
            else:
                env[n] = graph.node_copy(n, lambda a: env[a])
        graph.eliminate_dead_code()
        gm = fx.GraphModule(self.program, graph)
        self._cache[wanted] = gm
        return gm

    def _run(self, x, wanted):
        fn = self._tapped(tuple(wanted))
        b = self.static_batch
        if b is None or len(x) == b:
            outs = fn(x)
        else:  # a program exported with a fixed batch: run in chunks of it (last one padded)
            parts = []
            for start in range(0, len(x), b):
                chunk = x[start : start + b]
                n = len(chunk)
                if n < b:
                    chunk = torch.cat([chunk, chunk[-1:].expand(b - n, *chunk.shape[1:])])
                parts.append([o[:n] for o in fn(chunk)])
            outs = [torch.cat(col) for col in zip(*parts)]
        return outs[0], dict(zip(wanted, outs[1:]))


def _is_tensor(node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor)


# ------------------------------------------------------------------ TorchScript
_SEGMENT = re.compile(r"([^.()]+)\(([^()]*)\)")


def _ts_path(node) -> tuple[str, str]:
    """(module path, module type) of a TorchScript node from its inlined call stack."""
    try:
        text = node.getModuleHierarchy()
    except Exception:  # noqa: BLE001 - no call stack recorded
        return "", ""
    names, kind = [], ""
    for inst, typ in _SEGMENT.findall(text or ""):
        if inst in ("SELF", "UNKNOWN_INSTANCE") or inst.startswith("__"):
            break
        names.append(inst)
        kind = typ
    return ".".join(names), kind


class ScriptedModel(GraphModel):
    """A TorchScript module (scripted or traced) as a tappable module: the forward graph,
    inlined, rewritten to return the tapped values, run as a TorchScript function on the
    module (its parameters, buffers and training flag are the module's)."""

    def __init__(self, scripted) -> None:
        super().__init__()
        self.program = scripted
        self.layers, _ = self._analyse(self._inlined())

    def _program_bytes(self) -> bytes:
        import io

        buf = io.BytesIO()
        torch.jit.save(self.program, buf)
        return buf.getvalue()

    @classmethod
    def _from_bytes(cls, data: bytes):
        import io

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return cls(torch.jit.load(io.BytesIO(data), map_location="cpu"))

    def _inlined(self):
        graph = self.program.forward.graph.copy()
        torch._C._jit_pass_inline(graph)
        # fold constant branches (F.relu's `if inplace:`) so functional ops are top-level nodes
        torch._C._jit_pass_constant_propagation(graph)
        return graph

    @staticmethod
    def _analyse(graph):
        """Layers and their values (in one graph copy): module outputs and aten op outputs."""
        nodes = [n for n in graph.nodes() if n.kind().startswith("aten::")
                 and n.outputsSize() == 1 and n.output().type().kind() == "TensorType"]
        where = {n: _ts_path(n) for n in nodes}

        def user_path(u) -> str:
            while u.owningBlock() is not graph.block():  # a use inside an If/Loop block
                u = u.owningBlock().owningNode()
            return _ts_path(u)[0] if u.kind() != "prim::Return" else "\0return"

        layers: dict[str, GraphLayer] = {}
        values: dict[str, tuple] = {}
        module_out: dict[str, object] = {}
        for n in nodes:
            path = where[n][0]
            parts = path.split(".") if path else []
            users = {user_path(use.user) for use in n.output().uses()}
            for k in range(1, len(parts) + 1):
                p = ".".join(parts[:k])
                if any(u != p and not u.startswith(p + ".") for u in users):
                    module_out[p] = n
        counts: dict[str, int] = {}
        paths = set(module_out)
        leaves = {p for p in paths if not any(q.startswith(p + ".") for q in paths)}
        for n in nodes:
            for p, out in module_out.items():
                if out is n and p not in layers:
                    kind = _ts_module_type(n, p)
                    layers[p] = GraphLayer(p, kind, kind == "ReLU", True, True)
                    values[p] = (n.output(), n.inputsAt(0))
            op = n.kind().split("::", 1)[1].lstrip("_")
            k = counts.get(op, 0)
            counts[op] = k + 1
            name = op if k == 0 else f"{op}_{k}"
            if name not in layers:
                path = where[n][0]
                in_leaf = any(path == p or path.startswith(p + ".") for p in leaves)
                layers[name] = GraphLayer(name, op, op in ("relu", "relu_"), False, not in_leaf)
                values[name] = (n.output(), n.inputsAt(0))
        return layers, values

    def _tapped(self, wanted):
        if wanted in self._cache:
            return self._cache[wanted]
        graph = self._inlined()
        _, values = self._analyse(graph)
        ret = graph.return_node()
        outs = [ret.inputsAt(0)] + [values[n][1 if inp else 0] for n, inp in wanted]
        tup = graph.create("prim::TupleConstruct", outs)
        tup.insertBefore(ret)
        tup.output().setType(torch._C.TupleType([v.type() for v in outs]))
        ret.replaceInput(0, tup.output())
        fn = torch._C._create_function_from_graph(f"boxhack_taps_{len(self._cache)}", graph)
        self._cache[wanted] = fn
        return fn

    def _run(self, x, wanted):
        if not wanted:
            out = self.program(x)
            return out, {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            outs = self._tapped(tuple(wanted))(self.program._c, x)
        return outs[0], dict(zip(wanted, outs[1:]))


def _ts_module_type(node, path: str) -> str:
    try:
        text = node.getModuleHierarchy()
    except Exception:  # noqa: BLE001
        return "module"
    names = []
    for inst, typ in _SEGMENT.findall(text or ""):
        names.append(inst)
        if ".".join(names) == path:
            return typ
    return "module"
