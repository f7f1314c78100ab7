"""Model builders: architecture x normalization (kind x placement) x activation.

Every hidden layer is a small ``nn.Sequential`` block whose order *is* the placement:

    none:    Linear/Conv -> act
    before:  Linear/Conv -> norm -> act        (Ioffe & Szegedy 2015: normalize the pre-activation)
    after:   Linear/Conv -> act -> norm

so the layer order can be read off (and tested) directly, and diagnostics can hook the input
of each activation module (the "input to the nonlinearity" of the 2015 paper, Fig. 1). The
norm and the activation are constructor arguments chosen by name from one table each
(:data:`NORMS`, :data:`ACTIVATIONS`), as timm's ``create_norm`` does.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from bnbench.errors import ConfigError

# name -> torch.nn module class; a new activation is one entry here plus conf/activation/NAME.yaml
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "selu": nn.SELU,
    "linear": nn.Identity,  # no nonlinearity: a deep linear network (Santurkar et al. 2018's DLN)
}

PLACEMENTS = ("before", "after")


def _group_norm(groups: int, channels: int, norm_cfg) -> nn.GroupNorm:
    if channels % groups:
        raise ConfigError(f"norm.groups={groups} does not divide a layer of {channels} channels: choose a "
                          "number of groups that divides every layer's width")
    return nn.GroupNorm(groups, channels, eps=norm_cfg.eps, affine=norm_cfg.affine)


class RMSNorm2d(nn.Module):
    """RMSNorm of a conv layer's output (Zhang & Sennrich 2019): each sample divided by the root
    mean square of all its channels and positions, then scaled per channel; no mean is
    subtracted and there is no shift. The conv form of layer norm's GroupNorm(1, C), without
    centring; on an MLP's (batch, features) bnbench uses torch.nn.RMSNorm itself."""

    def __init__(self, channels: int, eps: float, affine: bool):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.pow(2).mean(dim=(1, 2, 3), keepdim=True) + self.eps)
        return x if self.weight is None else x * self.weight.view(1, -1, 1, 1)


def _rms_norm(channels: int, cfg, conv: bool) -> nn.Module:
    if conv:
        return RMSNorm2d(channels, cfg.eps, cfg.affine)
    return nn.RMSNorm(channels, eps=cfg.eps, elementwise_affine=cfg.affine)


# norm.kind -> (channels, norm config, conv: whether it follows a convolution) -> module; a new
# kind is one entry here, plus its stacked form in bnbench/job/stacking.py and conf/norm/ files.
# Layer norm is GroupNorm with one group (Wu & He 2018's definition: every channel and position
# of one sample); on an MLP's (batch, features) that is exactly nn.LayerNorm(features).
NORMS: dict[str, Callable[[int, object, bool], nn.Module] | None] = {
    "none": None,
    "bn": lambda c, cfg, conv: (nn.BatchNorm2d if conv else nn.BatchNorm1d)(
        c, eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine),
    "ln": lambda c, cfg, conv: _group_norm(1, c, cfg),
    "gn": lambda c, cfg, conv: _group_norm(cfg.groups, c, cfg),
    "rms": _rms_norm,
}


def create_norm(norm_cfg, channels: int, conv: bool) -> nn.Module | None:
    """The normalization layer ``norm_cfg`` asks for over ``channels``, or None (kind none)."""
    make = NORMS[norm_cfg.kind]
    return None if make is None else make(channels, norm_cfg, conv)


class _Stream:
    """A layer that draws random numbers from its own stream (seed, place), not the global RNG:
    a run's draws then depend only on its seed, whether it trains alone or stacked with other
    seeds (bnbench/job/stacking.py draws each copy's numbers from that copy's stream). The streams'
    states are part of a run's checkpoint (:func:`stream_states`)."""

    stream_seed: int
    generator: torch.Generator | None

    def rng(self, device: torch.device) -> torch.Generator:
        if self.generator is None or self.generator.device.type != device.type:
            self.generator = torch.Generator(device=device).manual_seed(self.stream_seed)
        return self.generator


class Dropout(_Stream, nn.Dropout):
    """nn.Dropout whose masks come from its own stream (:class:`_Stream`)."""

    def __init__(self, p: float, stream_seed: int):
        super().__init__(p)
        self.stream_seed = stream_seed
        self.generator = None

    def masked(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout in training mode: zero each entry with probability p, scale the rest by 1/(1-p)."""
        keep = torch.empty_like(x).bernoulli_(1 - self.p, generator=self.rng(x.device))
        return x * keep / (1 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.masked(x) if self.training and self.p > 0 else x


class CovariateNoise(_Stream, nn.Module):
    """Noisy BN (Santurkar, Tsipras, Ilyas & Madry 2018, sec. 2.1): noise with a random non-zero
    mean and non-unit variance, redrawn at every step, added to the output of a norm layer, to
    create internal covariate shift on purpose. At every training forward pass (one per step),
    each unit j (a feature, or a conv channel) draws its distribution

        mu_j ~ U(-norm.noise_mean, norm.noise_mean),   sigma_j ~ U(0, norm.noise_std)

    and every entry of the unit (each sample, each position) gets i.i.d. noise N(mu_j, sigma_j^2):

        y = x + mu_j + sigma_j * e,   e ~ N(0, 1).

    The form follows the paper's description (i.i.d. per sample and activation, non-zero mean,
    non-unit variance, a new distribution every step); the uniform ranges of mu and sigma are
    bnbench's choice, set per config (the paper's own constants could not be checked here).
    Eval mode adds nothing: the noise perturbs training only."""

    def __init__(self, mean: float, std: float, stream_seed: int):
        super().__init__()
        self.mean, self.std = float(mean), float(std)
        self.stream_seed = stream_seed
        self.generator = None

    def noised(self, x: torch.Tensor) -> torch.Tensor:
        """x plus this step's noise; x is (batch, units, ...). Draws mu, then sigma, then e."""
        g = self.rng(x.device)
        units = x.shape[1]
        mu = (torch.rand(units, generator=g, device=x.device, dtype=x.dtype) * 2 - 1) * self.mean
        sigma = torch.rand(units, generator=g, device=x.device, dtype=x.dtype) * self.std
        e = torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)
        per_unit = (1, units) + (1,) * (x.dim() - 2)
        return x + mu.view(per_unit) + sigma.view(per_unit) * e

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noised(x) if self.training else x

    def extra_repr(self) -> str:
        return f"mean=U(-{self.mean}, {self.mean}), std=U(0, {self.std})"


def stream_states(model: nn.Module, device: torch.device) -> list[torch.Tensor]:
    """The state of each random stream of ``model`` (dropout, noisy BN), for a checkpoint."""
    return [m.rng(device).get_state() for m in model.modules() if isinstance(m, _Stream)]


def set_stream_states(model: nn.Module, device: torch.device, states) -> None:
    layers = [m for m in model.modules() if isinstance(m, _Stream)]
    if len(layers) != len(states):
        raise ValueError(f"{len(states)} random streams saved, the model has {len(layers)}")
    for layer, state in zip(layers, states):
        layer.rng(device).set_state(state.cpu())


SideState = tuple[list[torch.Tensor], list[torch.Tensor]]  # norm buffers, random streams


def side_state(model: nn.Module, device: torch.device) -> SideState:
    """What a train-mode forward pass changes besides its output: the norm layers' running
    statistics and the random streams (dropout, noisy BN)."""
    return [b.detach().clone() for b in model.buffers()], stream_states(model, device)


def set_side_state(model: nn.Module, device: torch.device, state: SideState) -> None:
    buffers, streams = state
    with torch.no_grad():
        for buf, old in zip(model.buffers(), buffers):
            buf.copy_(old)
    set_stream_states(model, device, streams)


@contextmanager
def left_as_found(model: nn.Module, device: torch.device) -> Iterator[tuple[list[torch.Tensor], SideState]]:
    """For measurements that run extra passes on a model being trained (bnbench.job.ics,
    bnbench.job.smoothness): the passes run in train mode, and on exit the parameters, norm
    buffers, random streams and train/eval flag are as on entry, so training does not see them.
    Yields the parameters' values and the side state at entry (to return to between passes)."""
    params = list(model.parameters())
    weights = [p.detach().clone() for p in params]
    side = side_state(model, device)
    was_training = model.training
    model.train()
    try:
        yield weights, side
    finally:
        with torch.no_grad():
            for param, old in zip(params, weights):
                param.copy_(old)
        set_side_state(model, device, side)
        model.train(was_training)


def reset_streams(model: nn.Module) -> None:
    """Every random stream of ``model`` back to its start."""
    for layer in model.modules():
        if isinstance(layer, _Stream):
            layer.generator = None


def _hidden_block(
    layer_cls: type[nn.Module],
    in_dim: int,
    out_dim: int,
    norm_cfg,
    make_act: Callable[[], nn.Module],
    dropout: nn.Module | None,
    make_noise: Callable[[], nn.Module | None],
    **layer_kwargs,
) -> nn.Sequential:
    norm = create_norm(norm_cfg, out_dim, conv=layer_cls is not nn.Linear)
    # noisy BN: the noise follows the norm layer, wherever the placement puts it
    noisy = [] if norm is None else [n for n in [make_noise()] if n is not None]
    # A bias right before BN is cancelled by the mean subtraction; BN's beta replaces it.
    bias = not (norm is not None and norm_cfg.placement == "before" and norm_cfg.drop_bias)
    layer = layer_cls(in_dim, out_dim, bias=bias, **layer_kwargs)
    if norm is None:
        modules = [layer, make_act()]
    elif norm_cfg.placement == "before":
        modules = [layer, norm, *noisy, make_act()]
    else:
        modules = [layer, make_act(), norm, *noisy]
    if dropout is not None:
        modules.append(dropout)
    return nn.Sequential(*modules)


class MLP(nn.Module):
    """Fully connected net: `depth` hidden blocks of `width` units (or one block per entry of
    `widths`), then a linear output layer (classifier logits or regression outputs)."""

    def __init__(self, in_shape: Sequence[int], num_outputs: int, model_cfg, norm_cfg, make_act, make_dropout,
                 make_noise):
        super().__init__()
        in_features = math.prod(in_shape)
        hidden = list(model_cfg.widths) if getattr(model_cfg, "widths", None) else [model_cfg.width] * model_cfg.depth
        widths = [in_features] + hidden
        self.flatten = nn.Flatten()
        self.hidden = nn.Sequential(
            *[
                _hidden_block(
                    nn.Linear, widths[i], widths[i + 1], norm_cfg, make_act, make_dropout(), make_noise)
                for i in range(len(hidden))
            ]
        )
        self.head = nn.Linear(widths[-1], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.flatten(x)))


class AlexNetStyle(nn.Module):
    """AlexNet's shape (5 conv + 3 FC, max-pooling after conv 1, 2 and 5) scaled to small images.

    Kernel sizes and pooling follow the input size, so the same config serves 8x8 digits,
    28x28 MNIST-family and 32x32 CIFAR, with 1 or 3 channels: a pool is applied only while
    the feature map is at least 4 pixels wide, and an adaptive average pool fixes the
    classifier's input at no more than 3x3 per channel.
    """

    def __init__(self, in_shape: Sequence[int], num_outputs: int, model_cfg, norm_cfg, make_act, make_dropout,
                 make_noise):
        super().__init__()
        if len(in_shape) != 3:
            raise ConfigError(f"model=alexnet needs images (channels, height, width); this dataset has rows of "
                              f"{math.prod(in_shape)} features: use model=mlp")
        in_channels, height, width = in_shape
        size = min(height, width)
        channels = [in_channels, *model_cfg.channels]
        first_kernel = 5 if size >= 16 else 3
        blocks: list[nn.Module] = []
        for i in range(5):
            kernel = first_kernel if i == 0 else 3
            blocks.append(
                _hidden_block(nn.Conv2d, channels[i], channels[i + 1], norm_cfg, make_act, None, make_noise,
                              kernel_size=kernel, padding=kernel // 2)
            )
            if i in (0, 1, 4) and size >= 4:
                blocks.append(nn.MaxPool2d(2))
                size //= 2
        pooled = min(size, 3)
        blocks.append(fixed_pool(size, pooled))
        self.features = nn.Sequential(*blocks)
        self.flatten = nn.Flatten()
        fc_in = channels[-1] * pooled * pooled
        self.hidden = nn.Sequential(
            _hidden_block(nn.Linear, fc_in, model_cfg.fc_width, norm_cfg, make_act, make_dropout(), make_noise),
            _hidden_block(nn.Linear, model_cfg.fc_width, model_cfg.fc_width, norm_cfg, make_act,
                          make_dropout(), make_noise),
        )
        self.head = nn.Linear(model_cfg.fc_width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.flatten(self.features(x))))


def fixed_pool(size: int, pooled: int) -> nn.Module:
    """Average pooling of a ``size`` x ``size`` map to ``pooled`` x ``pooled``, as
    nn.AdaptiveAvgPool2d computes it, with a fixed kernel and stride wherever its windows are all
    alike (4 -> 3 is kernel 2, stride 1; 3 -> 3 is nothing): the adaptive pool's CUDA backward has
    no deterministic kernel (trainer.deterministic), a fixed one does. Same windows, same sums."""
    starts = [(i * size) // pooled for i in range(pooled)]
    ends = [-((-(i + 1) * size) // pooled) for i in range(pooled)]
    kernels = {e - b for b, e in zip(starts, ends)}
    strides = {b - a for a, b in zip(starts, starts[1:])}
    if size == pooled:
        return nn.Identity()
    if len(kernels) == 1 and len(strides) <= 1:
        return nn.AvgPool2d(kernels.pop(), stride=strides.pop() if strides else 1)
    return nn.AdaptiveAvgPool2d(pooled)


MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "alexnet": AlexNetStyle}


# The parts of a weight layer that draw random numbers, each from its own stream; dropout
# and noisy-BN layers draw theirs from streams of their own.
_PARTS = ("weight", "bias", "dropout", "noise")


def _stream_seed(seed: int, place: int, part: str) -> int:
    words = np.random.SeedSequence([int(seed) & (2**64 - 1), place, _PARTS.index(part)]).generate_state(2)
    return int(words[0]) << 32 | int(words[1])


def _layer_generator(seed: int, place: int, part: str) -> torch.Generator:
    """The random stream of one part of the ``place``-th Linear/Conv layer of a run with ``seed``.

    Pairing by seed compares runs that start from the same weights. Drawn from one global stream
    in construction order, a layer's weights would depend on which layers came before it: a
    dropped bias (norm.drop_bias) skips its draws and shifts every later layer. Here a layer's
    draws depend only on the seed and its place among the weight layers, so none, bn_before,
    bn_after and bn_before without biases start from identical Linear and Conv weights."""
    return torch.Generator().manual_seed(_stream_seed(seed, place, part))


@torch.no_grad()
def _init_weights(model: nn.Module, seed: int, init: str, std: float) -> None:
    """Initialize every Linear and Conv2d layer from its own stream (:func:`_layer_generator`):
    ``default`` is PyTorch's own reset_parameters (Kaiming-uniform weights, uniform biases in
    +-1/sqrt(fan_in)), ``gaussian`` is N(0, std) weights and zero biases."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for place, layer in enumerate(layers):
        weights = _layer_generator(seed, place, "weight")
        if init == "gaussian":
            nn.init.normal_(layer.weight, 0.0, std, generator=weights)
        else:
            nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=weights)
        if layer.bias is None:
            continue
        if init == "gaussian":
            nn.init.zeros_(layer.bias)
        else:
            fan_in = nn.init._calculate_fan_in_and_fan_out(layer.weight)[0]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(layer.bias, -bound, bound, generator=_layer_generator(seed, place, "bias"))


# Keys of a model option that are bnbench's, not the user's factory's.
OWN_MODEL_KEYS = ("_target_", "name", "init", "init_std")


class NormFactory:
    """What a user's model factory gets as ``norm``: ``norm(num_features)`` is the run's norm layer
    over that many features (``conv=True`` after a Conv2d), an identity for norm=none, with
    noisy BN's noise after it when asked; ``norm.placement`` is where the run puts it
    (before/after the activation: bnbench.blocks.norm_act honours it)."""

    def __init__(self, norm_cfg, make_noise: Callable[[], nn.Module | None]):
        self.cfg, self._noise = norm_cfg, make_noise
        self.placement, self.kind = str(norm_cfg.placement), str(norm_cfg.kind)

    def __call__(self, num_features: int, conv: bool = False) -> nn.Module:
        layer = create_norm(self.cfg, num_features, conv)
        if layer is None:
            return nn.Identity()
        noise = self._noise()
        return layer if noise is None else nn.Sequential(layer, noise)


def registered(group: str) -> dict[str, str]:
    """Factories other packages register under an entry point group (``bnbench.models``,
    ``bnbench.datasets``): name -> "module:attribute", usable as model.name / dataset.name."""
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=group)}


def _own_model(cfg, in_shape: Sequence[int], num_outputs: int, make_act: Callable[[], nn.Module],
               make_noise: Callable[[], nn.Module | None]) -> nn.Module:
    """The user's network: ``model._target_`` names an importable callable (Hydra's convention),
    called as factory(in_shape=..., num_classes=..., norm=..., activation=..., **the option's own
    keys); ``norm`` is a :class:`NormFactory`, ``activation()`` a new activation module."""
    from hydra.utils import get_object
    from omegaconf import OmegaConf

    target = str(cfg.model["_target_"]) if "_target_" in cfg.model else registered("bnbench.models")[cfg.model.name]
    try:
        factory = get_object(target.replace(":", "."))
    except Exception as err:  # ImportError, AttributeError: not importable from here
        raise ConfigError(f"model._target_={target} cannot be imported ({type(err).__name__}: {err}); put its module "
                          "on PYTHONPATH (or install it) and name it as package.module.function") from None
    keys = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in OWN_MODEL_KEYS}
    try:
        model = factory(in_shape=tuple(in_shape), num_classes=num_outputs, norm=NormFactory(cfg.norm, make_noise),
                        activation=make_act, **keys)
    except TypeError as err:  # the factory does not take these arguments
        raise ConfigError(f"model._target_={target}: {err}; it is called as factory(in_shape=..., num_classes=..., "
                          f"norm=..., activation=..., **its option's keys: {', '.join(keys) or 'none'})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model._target_={target} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def build_model(cfg, in_shape: Sequence[int], num_outputs: int) -> nn.Module:
    """Build the model a run config describes; its initial weights, dropout masks and noisy-BN
    noise depend on ``cfg.seed`` and each layer's place only (:func:`_layer_generator`), not on the
    global RNG."""
    act_cls = ACTIVATIONS[cfg.activation.name]
    act_kwargs = dict(cfg.activation.kwargs or {})

    def make_act() -> nn.Module:
        return act_cls(**act_kwargs)

    dropouts = 0

    def make_dropout() -> Dropout | None:
        nonlocal dropouts
        if cfg.trainer.dropout <= 0:
            return None
        dropouts += 1  # the place of this dropout layer among the model's dropout layers
        return Dropout(cfg.trainer.dropout, _stream_seed(cfg.seed, dropouts - 1, "dropout"))

    noises = 0
    noise_mean, noise_std = float(cfg.norm.get("noise_mean", 0.0)), float(cfg.norm.get("noise_std", 0.0))

    def make_noise() -> CovariateNoise | None:
        nonlocal noises
        if noise_mean <= 0 and noise_std <= 0:
            return None
        noises += 1  # the place of this noise layer among the model's noise layers
        return CovariateNoise(noise_mean, noise_std, _stream_seed(cfg.seed, noises - 1, "noise"))

    if "_target_" in cfg.model or cfg.model.get("name") not in MODELS:  # the user's (validate checked the name)
        model = _own_model(cfg, in_shape, num_outputs, make_act, make_noise)
    else:
        model = MODELS[cfg.model.name](in_shape, num_outputs, cfg.model, cfg.norm, make_act, make_dropout, make_noise)
    _init_weights(model, cfg.seed, cfg.model.get("init", "default"), cfg.model.get("init_std", 0.01))
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
