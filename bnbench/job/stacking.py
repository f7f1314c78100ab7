"""Copies of a model: the S seeds of one sweep cell trained together as one grouped model.

Runs that differ only by seed run the same small operations; on their own they leave most of a
core (or a GPU) waiting on per-operation overhead. Here S copies, each built exactly as its own
run builds it (``build_model`` with the copy's seed), become one model whose layers hold the S
copies side by side:

    Linear       weights (S, in, out), applied to (S, batch, in) with one batched matmul
    Conv2d       one conv with groups=S over S x channels: S independent convolutions
    BatchNorm    one BN over S x features: each copy's features are normalized over that
                 copy's batch only, with its own running statistics, as S separate BNs would
    GroupNorm    (layer norm and group norm) one GroupNorm with S x groups over S x channels:
                 the groups never straddle two copies, so each is normalized as its own was
    RMSNorm      each copy's features (or channels and positions) over their own root mean
                 square, with its own scale
    Dropout      each copy's mask from that copy's own stream (bnbench.job.models.Dropout), so a
                 seed's masks do not depend on which stack it is in
    noisy BN     likewise: each copy's noise from its own stream (bnbench.job.models.CovariateNoise)
    activation, pooling   per element / per channel: shared as they are

Each copy sees its own batches (the data order of its seed), its own loss, and so its own
gradients; with a per-element optimizer every copy follows its separate run's trajectory up to
float rounding (other kernels sum in another order), which the tests check in float64.

Every grouped tensor keeps the name its copies have in the plain model (``hidden.0.0.weight``)
and a layout (:func:`layout`), so a copy's state (weights, BN statistics, optimizer moments) is
cut out of the stack and put back exactly: a stacked run writes each seed's checkpoint in the
plain model's format, and any checkpoint resumes stacked or alone. An ordinary run is a
:class:`SingleNet`, a stack of one that calls the plain model itself, so its numbers are those
of the model alone.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from bnbench.job.models import ACTIVATIONS, CovariateNoise, Dropout, RMSNorm2d


class NotStackable(Exception):
    """These copies cannot train as one stack; the message says why (for the log)."""


# ------------------------------------------------------------------------------- grouped layers

class GroupedLinear(nn.Module):
    """S Linear layers side by side: (S, B, in) -> (S, B, out)."""

    def __init__(self, linears: Sequence[nn.Linear]):
        super().__init__()
        # Held as (S, in, out), each copy's weight transposed: bmm's backward then yields the
        # gradient in the parameter's own layout. Held as (S, out, in) and transposed in forward,
        # every step paid a copy of each weight gradient into place (docs/benchmarks.md).
        self.weight = nn.Parameter(torch.stack([m.weight.detach().t() for m in linears]).contiguous())
        has_bias = linears[0].bias is not None
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in linears]).clone()) if has_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


class _Rows:
    """A norm of S copies applied to (S, B, C) as one norm over the S*C features of (B, S*C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, b, c = x.shape
        return super().forward(x.transpose(0, 1).reshape(b, s * c)).view(b, s, c).transpose(0, 1)


class RowsBatchNorm(_Rows, nn.BatchNorm1d):
    pass


class RowsGroupNorm(_Rows, nn.GroupNorm):
    pass


def _grouped_batchnorm(bns: Sequence[nn.modules.batchnorm._BatchNorm],
                       cls: type[nn.Module] | None = None) -> nn.modules.batchnorm._BatchNorm:
    first = bns[0]
    grouped = (cls or type(first))(first.num_features * len(bns), eps=first.eps, momentum=first.momentum,
                                   affine=first.affine, track_running_stats=first.track_running_stats)
    with torch.no_grad():
        for name, tensor in [*grouped.named_parameters(), *grouped.named_buffers()]:
            if name == "num_batches_tracked":
                tensor.copy_(first.num_batches_tracked)
            else:
                tensor.copy_(torch.cat([getattr(bn, name) for bn in bns]))
    return grouped


def _grouped_groupnorm(gns: Sequence[nn.GroupNorm], cls: type[nn.GroupNorm] = nn.GroupNorm) -> nn.GroupNorm:
    first, s = gns[0], len(gns)
    grouped = cls(first.num_groups * s, first.num_channels * s, eps=first.eps, affine=first.affine)
    if first.affine:
        with torch.no_grad():
            grouped.weight.copy_(torch.cat([gn.weight for gn in gns]))
            grouped.bias.copy_(torch.cat([gn.bias for gn in gns]))
    return grouped


class StackedRMSNorm(nn.Module):
    """The RMSNorm layers of S copies: each copy's features (rows: (S, B, C)) or its channels and
    positions (conv: (B, S*C, H, W)) divided by their own root mean square, then scaled by that
    copy's weights, held concatenated (S*C,) like a norm's."""

    def __init__(self, norms: Sequence[nn.Module], conv_layout: bool):
        super().__init__()
        first = norms[0]
        self.copies, self.conv_layout = len(norms), conv_layout
        self.eps = first.eps
        has_weight = getattr(first, "weight", None) is not None
        self.weight = nn.Parameter(torch.cat([n.weight.detach() for n in norms]).clone()) if has_weight else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv_layout:
            b, sc = x.shape[:2]
            per_copy = x.reshape(b, self.copies, -1)
            x = (per_copy * torch.rsqrt(per_copy.pow(2).mean(dim=2, keepdim=True) + self.eps)).reshape(x.shape)
            return x if self.weight is None else x * self.weight.view(1, sc, 1, 1)
        x = x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return x if self.weight is None else x * self.weight.view(self.copies, 1, -1)


def _grouped_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    first, s = convs[0], len(convs)
    grouped = nn.Conv2d(first.in_channels * s, first.out_channels * s, first.kernel_size, stride=first.stride,
                        padding=first.padding, dilation=first.dilation, groups=s, bias=first.bias is not None)
    with torch.no_grad():
        grouped.weight.copy_(torch.cat([c.weight for c in convs]))
        if grouped.bias is not None:
            grouped.bias.copy_(torch.cat([c.bias for c in convs]))
    return grouped


class StackedDropout(nn.Module):
    """The Dropout layers of S copies on (S, B, ...): copy i's mask drawn from copy i's stream,
    with the shape and in the order its own run draws it."""

    def __init__(self, dropouts: Sequence[Dropout]):
        super().__init__()
        self.copies = list(dropouts)  # a plain list: their generators are the copies' own, not submodules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        return torch.stack([d.masked(x[i]) for i, d in enumerate(self.copies)])


class StackedNoise(nn.Module):
    """The noisy-BN layers of S copies: copy i's noise drawn from copy i's stream, in the shape
    its own run draws it: on (S, B, C) rows, or on (B, S*C, H, W) conv features, where copy i
    holds channels i*C..(i+1)*C."""

    def __init__(self, noises: Sequence[CovariateNoise], conv_layout: bool):
        super().__init__()
        self.copies = list(noises)  # a plain list: their generators are the copies' own
        self.conv_layout = conv_layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.conv_layout:
            parts = x.chunk(len(self.copies), dim=1)
            return torch.cat([n.noised(part) for n, part in zip(self.copies, parts)], dim=1)
        return torch.stack([n.noised(x[i]) for i, n in enumerate(self.copies)])


def _shared(module: nn.Module) -> nn.Module:
    if isinstance(module, (*ACTIVATIONS.values(), nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Identity)):
        return module
    raise NotStackable(f"a {type(module).__name__} layer has no stacked form")


def _grouped_sequential(blocks: Sequence[nn.Module], conv_layout: bool) -> nn.Sequential:
    """The same Sequential for S copies (recursing into the blocks of hidden layers)."""
    out: list[nn.Module] = []
    for parts in zip(*[list(b) for b in blocks]):
        first = parts[0]
        if isinstance(first, nn.Sequential):
            out.append(_grouped_sequential(parts, conv_layout))
        elif isinstance(first, nn.Linear):
            out.append(GroupedLinear(parts))
        elif isinstance(first, nn.Conv2d):
            out.append(_grouped_conv(parts))
        elif isinstance(first, nn.BatchNorm2d):
            out.append(_grouped_batchnorm(parts))
        elif isinstance(first, nn.BatchNorm1d):
            out.append(_grouped_batchnorm(parts, RowsBatchNorm))
        elif isinstance(first, nn.GroupNorm):
            out.append(_grouped_groupnorm(parts, nn.GroupNorm if conv_layout else RowsGroupNorm))
        elif isinstance(first, (nn.RMSNorm, RMSNorm2d)):
            out.append(StackedRMSNorm(parts, conv_layout))
        elif isinstance(first, Dropout):
            if conv_layout:
                raise NotStackable("dropout between convolutions has no stacked form")
            out.append(StackedDropout(parts))
        elif isinstance(first, CovariateNoise):
            out.append(StackedNoise(parts, conv_layout))
        else:
            out.append(_shared(first))
    return nn.Sequential(*out)


class StackedNet(nn.Module):
    """S copies of an MLP or AlexNet-style model (bnbench.job.models): input (S, B, ...) -> (S, B, outputs).

    The conv part runs on (B, S*C, H, W) (channels of copy s at s*C..(s+1)*C), the fully
    connected part on (S, B, features)."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        self.copies = len(models)
        first = models[0]
        if not (isinstance(getattr(first, "hidden", None), nn.Sequential) and isinstance(getattr(first, "head", None),
                                                                                        nn.Linear)):
            raise NotStackable(f"{type(first).__name__} is not built of hidden blocks and a linear head")
        self.features = _grouped_sequential([m.features for m in models], True) if hasattr(first, "features") else None
        self.hidden = _grouped_sequential([m.hidden for m in models], False)
        self.head = GroupedLinear([m.head for m in models])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, b = x.shape[:2]
        if self.features is not None:
            x = self.features(x.transpose(0, 1).reshape(b, s * x.shape[2], *x.shape[3:]))
            x = x.reshape(b, s, -1).transpose(0, 1)  # each copy's (C, h, w) flattened, as nn.Flatten does
        else:
            x = x.reshape(s, b, -1)
        return self.head(self.hidden(x))


class SingleNet(nn.Module):
    """An ordinary run as a stack of one: (1, B, ...) -> (1, B, outputs) through the plain model
    itself, so it computes exactly what the model alone computes."""

    copies = 1

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x[0]).unsqueeze(0)


def stack(models: Sequence[nn.Module]) -> nn.Module:
    """The network that trains ``models`` together: a SingleNet for one, a StackedNet for more
    (NotStackable, with the reason, when they cannot be grouped)."""
    return SingleNet(models[0]) if len(models) == 1 else StackedNet(models)


# ------------------------------------------------------------------------------- states

def layout(net: nn.Module, name: str) -> str:
    """How the grouped tensor ``name`` of a StackedNet holds its copies' tensors of that name:
    ``stack_t`` (stacked along a new dim 0, each transposed: GroupedLinear weights), ``stack``
    (along a new dim 0), ``cat`` (concatenated along dim 0: conv, norm) or ``shared`` (one value
    for all: BN's num_batches_tracked)."""
    owner = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
    leaf = name.rsplit(".", 1)[-1]
    if isinstance(owner, GroupedLinear):
        return "stack_t" if leaf == "weight" else "stack"
    return "shared" if leaf == "num_batches_tracked" else "cat"


def split(tensor: torch.Tensor, how: str, copies: int) -> list[torch.Tensor]:
    """The copies' own tensors held in a grouped ``tensor`` laid out as ``how``."""
    if how == "stack_t":
        return [t.t() for t in tensor.unbind(0)]
    if how == "stack":
        return list(tensor.unbind(0))
    if how == "shared":
        return [tensor] * copies
    return list(tensor.chunk(copies, 0))


def join(tensors: Sequence[torch.Tensor], how: str) -> torch.Tensor:
    """The grouped tensor of the copies' ``tensors`` (inverse of :func:`split`)."""
    if how == "shared":
        if any(not torch.equal(t, tensors[0]) for t in tensors[1:]):
            raise NotStackable("the copies disagree on a value the stack shares (their checkpoints are at "
                               "different steps)")
        return tensors[0]
    if how == "stack_t":
        return torch.stack([t.t() for t in tensors]).contiguous()
    if how == "stack":
        return torch.stack(list(tensors))
    return torch.cat(list(tensors))


def write_back(net: nn.Module, models: Sequence[nn.Module]) -> None:
    """Copy each copy's weights and buffers out of the stack into its plain model, so that
    ``models[i].state_dict()`` is copy i's state in the plain model's format."""
    if isinstance(net, SingleNet):
        return  # it trains the plain model itself
    with torch.no_grad():
        for name, tensor in _tensors(net):
            for model, part in zip(models, split(tensor, layout(net, name), len(models))):
                _find(model, name).copy_(part)


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*module.named_parameters(), *module.named_buffers()]


def _find(model: nn.Module, name: str) -> torch.Tensor:
    owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return getattr(owner, name.rsplit(".", 1)[-1])


def optimizer_state_of_copy(net: nn.Module, optimizer: torch.optim.Optimizer, model: nn.Module, i: int) -> dict:
    """Copy i's optimizer state in the format a plain optimizer over ``model.parameters()``
    has: per-parameter state cut out of the grouped state like the parameter itself; step
    counts shared. A SingleNet's optimizer state is the plain one already."""
    state = optimizer.state_dict()
    if isinstance(net, SingleNet):
        return state
    copies = net.copies
    plain_index = {name: k for k, (name, _) in enumerate(model.named_parameters())}
    names = [name for name, _ in net.named_parameters()]
    out_state: dict[int, dict] = {}
    for g, per_param in state["state"].items():
        name = names[g]
        how = layout(net, name)
        out_state[plain_index[name]] = {
            key: split(value, how, copies)[i].clone() if _per_element(value) else value
            for key, value in per_param.items()}
    groups = []
    for group in state["param_groups"]:
        groups.append({**group, "params": sorted(plain_index[names[g]] for g in group["params"])})
    return {"state": out_state, "param_groups": groups}


def optimizer_state_of_stack(net: nn.Module, optimizer: torch.optim.Optimizer, models: Sequence[nn.Module],
                             states: Sequence[dict]) -> dict:
    """The grouped optimizer state of copies whose plain states are ``states`` (inverse of
    :func:`optimizer_state_of_copy`), for ``optimizer.load_state_dict``."""
    if isinstance(net, SingleNet):
        return states[0]
    plain_index = {name: k for k, (name, _) in enumerate(models[0].named_parameters())}
    fresh = optimizer.state_dict()
    grouped_state: dict[int, dict] = {}
    for g, (name, param) in enumerate(net.named_parameters()):
        per_copy = [st["state"].get(plain_index[name]) for st in states]
        if all(p is None for p in per_copy):
            continue
        if any(p is None or set(p) != set(per_copy[0]) for p in per_copy):
            raise NotStackable("the copies' optimizer states differ in kind")
        how = layout(net, name)
        grouped_state[g] = {
            key: join([p[key] for p in per_copy], how) if _per_element(per_copy[0][key])
            else _same([p[key] for p in per_copy])
            for key in per_copy[0]}
    groups = []
    for group, plain_group in zip(fresh["param_groups"], states[0]["param_groups"]):
        groups.append({**plain_group, "params": group["params"]})
    return {"state": grouped_state, "param_groups": groups}


def _per_element(value) -> bool:
    """Whether an optimizer state value is per element of its parameter (a moment, a momentum
    buffer) rather than one value for the whole tensor (Adam's step count)."""
    return isinstance(value, torch.Tensor) and value.dim() > 0


def _same(values: list):
    first = values[0]
    for other in values[1:]:
        same = torch.equal(other, first) if isinstance(first, torch.Tensor) else other == first
        if not same:
            raise NotStackable("the copies' optimizer states are at different steps")
    return first
