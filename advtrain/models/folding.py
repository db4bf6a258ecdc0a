"""BatchNorm folded into the convolution before it, for the attack's eval-mode passes.

Every adversarial-training step runs its attack (PGD-10: ten forward and backward passes w.r.t.
the input) with the model in eval mode, where a BatchNorm is a fixed per-channel affine map. A
BatchNorm reading a convolution's output alone folds into that convolution:
W' = W·s and b' = β + (b − μ)·s with s = γ/√(σ² + ε). Each folded pair saves one memory-bound pass
over an activation, forward and backward, at every attack step; what is computed is the same up
to round-off.

:func:`fold_batchnorm` returns an *attack view*: a torch.fx trace of the live model, taken in eval
mode, whose foldable pairs are one convolution with the folded weight and bias held as buffers.
Every other node calls the live model's own modules, parameters and buffers (shared, never
copied), so only the folded buffers can go stale, and :meth:`AttackView.refresh` recomputes them
in place from the live convolutions and BatchNorms (no autograd, a few ``torch._foreach`` ops for
all layers together). The optimizer changes the live weights at every step: refresh before each
attack. The view is not a submodule of the model, so it never reaches a state dict or a
DistributedDataParallel wrapper, and it computes the eval-mode model only (it refuses train mode).
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from advtrain.runtime.modes import eval_mode

#: BatchNorm classes whose eval-mode forward is exactly the per-channel affine map (subclasses may add more).
_BATCHNORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


class FoldedConv2d(nn.Module):
    """A convolution and the BatchNorm after it as one convolution; :meth:`AttackView.refresh` writes both buffers."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        # Buffers, not parameters: an attack differentiates w.r.t. its input only.
        self.register_buffer("weight", torch.empty_like(conv.weight, requires_grad=False), persistent=False)
        self.register_buffer("bias", conv.weight.new_empty(conv.out_channels), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


@dataclass(frozen=True)
class _Pair:
    """One folded pair: where the live convolution and BatchNorm are, and the module that replaces both."""

    conv: str
    bn: str
    name: str
    folded: FoldedConv2d


class AttackView(nn.Module):
    """The eval-mode model with BatchNorm folded into its convolutions, for attacks; built by :func:`fold_batchnorm`.

    Attributes:
        folded: Number of Conv2d→BatchNorm pairs folded.
        unfolded: Number of BatchNorm layers left as they are (they still run, in eval mode).
    """

    def __init__(self, graph: fx.GraphModule, live: nn.Module, pairs: list[_Pair], unfolded: int) -> None:
        super().__init__()
        self.graph_module = graph
        # Plain attributes, not submodules: the live model must not become part of the view's module tree twice.
        object.__setattr__(self, "_live", live)
        object.__setattr__(self, "_pairs", pairs)
        object.__setattr__(self, "_links", _shared_targets(graph, {p.name for p in pairs}))
        self.folded, self.unfolded = len(pairs), unfolded
        self.training = False  # this module only: its children are the live model's, whose modes are not ours
        self.refresh()

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            raise RuntimeError("an AttackView computes the eval-mode model (BatchNorm folded); run it in eval "
                               "mode, as attacks do, and train the model itself")
        return self.graph_module(x)

    @torch.no_grad()
    def refresh(self) -> None:
        """Make the view compute the live model as it is now: re-link shared targets, recompute the folded buffers.

        Targets are looked up by name in the live model each time, so a buffer or module the live model
        replaced (``model.to(...)`` replaces buffers) is picked up, never a stale copy.
        """
        live, graph = self.__dict__["_live"], self.graph_module
        for path, get in self.__dict__["_links"]:
            target = get(live)
            parent, _, name = path.rpartition(".")
            holder = graph.get_submodule(parent)
            if getattr(holder, name) is not target:
                _relink(holder, name, target)
        pairs: list[_Pair] = self.__dict__["_pairs"]
        convs = [operator.attrgetter(p.conv)(live) for p in pairs]
        bns = [operator.attrgetter(p.bn)(live) for p in pairs]
        for p, conv in zip(pairs, convs, strict=True):
            _match_storage(p.folded, conv.weight)
        weights = [p.folded.weight for p in pairs]
        biases = [p.folded.bias for p in pairs]
        # s = γ/√(σ² + ε), per output channel (γ = 1 without affine)
        scales = torch._foreach_add([bn.running_var for bn in bns], [float(bn.eps) for bn in bns])
        torch._foreach_rsqrt_(scales)
        affine = [i for i, bn in enumerate(bns) if bn.weight is not None]
        if affine:
            torch._foreach_mul_([scales[i] for i in affine], [bns[i].weight for i in affine])
        # W' = W·s
        torch._foreach_copy_(weights, [conv.weight for conv in convs])
        torch._foreach_mul_(weights, [s.view(-1, 1, 1, 1) for s in scales])
        # b' = (b − μ)·s + β (b = 0 without a convolution bias, β = 0 without affine)
        torch._foreach_copy_(biases, [bn.running_mean for bn in bns])
        torch._foreach_neg_(biases)
        with_bias = [i for i, conv in enumerate(convs) if conv.bias is not None]
        if with_bias:
            torch._foreach_add_([biases[i] for i in with_bias], [convs[i].bias for i in with_bias])
        torch._foreach_mul_(biases, scales)
        if affine:
            torch._foreach_add_([biases[i] for i in affine], [bns[i].bias for i in affine])


@dataclass(frozen=True)
class FoldOutcome:
    """What :func:`fold_batchnorm` made: the view, or None and why not."""

    view: AttackView | None
    reason: str


def fold_batchnorm(model: nn.Module, example: Tensor | None = None, *, rtol: float = 1e-2) -> FoldOutcome:
    """The attack view of ``model`` (see the module docstring), or None with the reason when there is none.

    Never raises for a model it cannot handle: an untraceable model, one without a foldable pair, or
    (when ``example`` inputs are given) a view whose eval-mode logits differ from the model's by more
    than ``rtol`` of their scale comes back as ``FoldOutcome(None, reason)``. The check is meant for
    gross differences (a trace that does not compute the model), not round-off: TF32 convolutions
    differ by about 1e-3. Nothing of ``model`` changes, its modes included.
    """
    try:
        with eval_mode(model):  # `self.training` branches are traced as in eval mode, which is all a view computes
            graph = _Tracer().trace(model)
    except Exception as err:  # noqa: BLE001 - whatever fx raises on a model it cannot trace
        return FoldOutcome(None, f"torch.fx cannot trace {type(model).__name__} ({_first_line(err)})")
    nested = _nested_targets(graph)
    if nested:
        return FoldOutcome(None, f"the traced graph uses both {nested[0]} and something inside it")
    pairs = _rewrite(graph, model)
    batchnorms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not pairs:
        return FoldOutcome(None, f"no Conv2d feeds a BatchNorm2d alone ({batchnorms} BatchNorm layers): "
                                 f"nothing to fold")
    objects = {p.name: p.folded for p in pairs}
    try:
        roots = {node.target: objects[node.target] if node.target in objects else
                 operator.attrgetter(node.target)(model)
                 for node in graph.nodes if node.op in ("call_module", "get_attr")}
        view = AttackView(fx.GraphModule(roots, graph, class_name="FoldedForward"), model, pairs,
                          batchnorms - len(pairs))
        gap = 0.0 if example is None else _logit_gap(model, view, example)
    except Exception as err:  # noqa: BLE001 - a run attacks the model itself rather than stop here
        return FoldOutcome(None, f"the folded view of {type(model).__name__} does not run ({_first_line(err)})")
    if not gap <= rtol:  # also NaN
        return FoldOutcome(None, f"the folded view's logits differ from the model's by {gap:.2g} of their scale")
    return FoldOutcome(view, f"folded {len(pairs)} BatchNorm layers into their convolutions"
                             + (f" ({batchnorms - len(pairs)} left as they are)" if batchnorms > len(pairs) else ""))


# ------------------------------------------------------------------------------------- internals
class _Tracer(fx.Tracer):
    """fx's tracer that also keeps timm's declared no-trace modules and functions whole."""

    def __init__(self) -> None:
        try:
            from timm.layers import get_notrace_functions, get_notrace_modules
        except ImportError:  # a timm without the registry: plain fx
            get_notrace_functions = get_notrace_modules = list

        super().__init__(autowrap_functions=tuple(f for f in get_notrace_functions() if inspect.isfunction(f)))
        self._leaves = tuple(get_notrace_modules())

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, self._leaves) or super().is_leaf_module(m, module_qualified_name)


def _rewrite(graph: fx.Graph, model: nn.Module) -> list[_Pair]:
    """Replace each foldable conv→BN pair of ``graph`` by a call of a new :class:`FoldedConv2d`, in place."""
    done: list[_Pair] = []
    for node in list(graph.nodes):
        if node.op != "call_module" or type(operator.attrgetter(node.target)(model)) is not nn.Conv2d:
            continue
        conv = operator.attrgetter(node.target)(model)
        users = list(node.users)
        if len(users) != 1 or users[0].op != "call_module" or users[0].args != (node,) or users[0].kwargs:
            continue
        bn_node = users[0]
        bn = operator.attrgetter(bn_node.target)(model)
        if not _foldable(conv, bn):
            continue
        name = f"folded_{len(done)}"
        done.append(_Pair(node.target, bn_node.target, name, FoldedConv2d(conv)))
        node.target = name
        bn_node.replace_all_uses_with(node)
        graph.erase_node(bn_node)
    graph.lint()
    return done


def _foldable(conv: nn.Conv2d, bn: nn.Module) -> bool:
    """An exact BatchNorm class (not a subclass with its own forward) using running statistics, of matching width."""
    return (type(bn) in _BATCHNORMS and bn.track_running_stats and bn.running_var is not None
            and bn.num_features == conv.out_channels and conv.padding_mode == "zeros")


def _nested_targets(graph: fx.Graph) -> list[str]:
    """Targets that are also a prefix of another target (a module tree for them would write into the live model)."""
    targets = {node.target for node in graph.nodes if node.op in ("call_module", "get_attr")}
    return sorted(t for t in targets if any(other.startswith(t + ".") for other in targets))


def _shared_targets(graph: fx.GraphModule, own: set[str]) -> list[tuple[str, operator.attrgetter]]:
    """Every call_module/get_attr target of the view that is the live model's (all but the folded modules)."""
    return [(node.target, operator.attrgetter(node.target)) for node in graph.graph.nodes
            if node.op in ("call_module", "get_attr") and node.target not in own]


def _relink(holder: nn.Module, name: str, target: object) -> None:
    delattr(holder, name)
    if isinstance(target, Tensor) and not isinstance(target, nn.Parameter):
        holder.register_buffer(name, target)
    else:
        setattr(holder, name, target)


def _match_storage(folded: FoldedConv2d, weight: Tensor) -> None:
    """Reallocate the folded buffers when the live weight moved device or dtype (memory format follows it)."""
    if folded.weight.device != weight.device or folded.weight.dtype != weight.dtype \
            or folded.weight.shape != weight.shape:
        folded.weight = torch.empty_like(weight, requires_grad=False)
        folded.bias = weight.new_empty(weight.shape[0])


def _logit_gap(model: nn.Module, view: AttackView, example: Tensor) -> float:
    """max |view − model| / max |model| over the logits of ``example``, both in eval mode."""
    with torch.no_grad(), eval_mode(model):
        want, got = model(example).float(), view(example).float()
    scale = want.abs().max().clamp_min(1e-6)
    return float((got - want).abs().max() / scale)


def _first_line(err: Exception) -> str:
    detail = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {detail}" if detail else type(err).__name__
