"""Top-down generators ``x_hat = G(h)`` (eqs. 6, 19, 29-31).

A generator maps the generator input ``h`` of shape ``(n, Q)`` to *pre-activation* images
(``logits``); the output activation is applied by :meth:`Generator.forward` after optional
Gaussian noise, which the paper adds before the output activation during training only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from kaem.model.bases import build_basis
from kaem.model.kan import KANLayer

__all__ = ["OUTPUT_ACTIVATIONS", "CNNGenerator", "Generator", "KANGenerator"]

OUTPUT_ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "none": lambda x: x}


class Generator(nn.Module):
    """Base class: ``logits(h)`` plus output activation with optional pre-activation noise.

    Parameters
    ----------
    latent_dim
        Width ``Q`` of the generator input.
    image_shape
        ``(C, H, W)`` of the images.
    output_activation
        ``sigmoid`` (the paper; images in ``[0, 1]``), ``tanh`` or ``none``.
    """

    def __init__(
        self, latent_dim: int, image_shape: Sequence[int], output_activation: str = "sigmoid"
    ) -> None:
        super().__init__()
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(
                f"unknown output activation {output_activation!r}; "
                f"choose one of {sorted(OUTPUT_ACTIVATIONS)}"
            )
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W) of positive sizes, got {image_shape}")
        self.latent_dim = int(latent_dim)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.output_activation = output_activation

    def check_input_width(self, width: int, what: str) -> None:
        """Raise if ``width`` (the ``what`` that feeds this generator) is not ``latent_dim``."""
        if width != self.latent_dim:
            raise ValueError(f"{what} {width} does not match the generator input {self.latent_dim}")

    def logits(self, h: Tensor) -> Tensor:
        """Pre-activation images, ``(n, Q) -> (n, C, H, W)``."""
        raise NotImplementedError

    def forward(
        self, h: Tensor, noise_std: float = 0.0, generator: torch.Generator | None = None
    ) -> Tensor:
        """Images ``act(G(h) + noise_std * eps)``, ``(n, Q) -> (n, C, H, W)``.

        Parameters
        ----------
        h
            Generator input, shape ``(n, Q)``.
        noise_std
            Standard deviation of the Gaussian noise added before the output activation
            (the paper's ``generator_noise``; used in training only).
        generator
            Source of the noise.
        """
        if h.ndim != 2 or h.shape[1] != self.latent_dim:
            raise ValueError(
                f"generator input must have shape (n, {self.latent_dim}), got {tuple(h.shape)}"
            )
        out = self.logits(h)
        if noise_std > 0:
            eps = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
            out = out + noise_std * eps
        return OUTPUT_ACTIVATIONS[self.output_activation](out)


class KANGenerator(Generator):
    """KAN generator with KART widths ``(Q, 2Q, ..., C H W)`` (App. B.2, eqs. 30-31).

    Parameters
    ----------
    latent_dim
        ``Q``.
    image_shape
        ``(C, H, W)``.
    hidden_widths
        Widths between ``Q`` and the pixels; the default ``(2 Q,)`` gives the paper's NIST
        generator ``81 -> 162 -> 784``.
    basis, grid_size, grid_range, degree, tau, trainable_tau, omega
        Basis of every layer (see :func:`kaem.model.bases.build_basis`).
    base_activation, layer_norm, coef_init_scale, base_scale, spline_scale
        KAN layer settings (see :class:`kaem.model.kan.KANLayer`); layer norm is applied to hidden
        layers only, never to the pixels.
    output_activation
        See :class:`Generator`.
    generator
        Random generator for the initial parameters.
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        *,
        hidden_widths: Sequence[int] | None = None,
        basis: str = "rbf",
        grid_size: int = 20,
        grid_range: tuple[float, float] = (-1.2, 1.2),
        degree: int = 3,
        tau: float = 1.0,
        trainable_tau: bool = True,
        omega: float = 5.0,
        base_activation: str = "relu",
        layer_norm: bool = False,
        coef_init_scale: float = 0.1,
        base_scale: float = 1.0,
        spline_scale: float = 1.0,
        output_activation: str = "sigmoid",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__(latent_dim, image_shape, output_activation)
        hidden = [2 * latent_dim] if hidden_widths is None else [int(w) for w in hidden_widths]
        if any(w < 1 for w in hidden):
            raise ValueError(f"hidden widths must be positive, got {hidden}")
        widths = [latent_dim, *hidden, math.prod(self.image_shape)]
        self.widths = tuple(widths)
        layers = []
        for i, (w_in, w_out) in enumerate(itertools.pairwise(widths)):
            last = i == len(widths) - 2
            b = build_basis(
                basis,
                w_in,
                grid_size=grid_size,
                grid_range=grid_range,
                degree=degree,
                tau=tau,
                trainable_tau=trainable_tau,
                omega=omega,
            )
            layers.append(
                KANLayer(
                    w_in,
                    w_out,
                    b,
                    base_activation=base_activation,
                    layer_norm=layer_norm and not last,
                    coef_init_scale=coef_init_scale,
                    base_scale=base_scale,
                    spline_scale=spline_scale,
                    generator=generator,
                )
            )
        self.layers = nn.ModuleList(layers)

    def logits(self, h: Tensor) -> Tensor:
        for layer in self.layers:
            h = layer(h)
        return h.reshape(h.shape[0], *self.image_shape)

    @torch.no_grad()
    def update_grid(self, h: Tensor, uniform_ratio: float = 0.05) -> None:
        """Grid update of every layer from generator inputs ``h`` of shape ``(n, Q)``.

        Each layer is refit on the activations that reach it, in order (Liu et al. 2024).
        """
        for layer in self.layers:
            layer.update_grid(h, uniform_ratio)
            h = layer(h)


class CNNGenerator(Generator):
    """Transposed-convolution generator of App. F.2.1.

    The input ``h`` is reshaped to ``(n, Q, 1, 1)``; a ``4 x 4`` transposed convolution with
    stride 1 and no padding gives ``4 x 4``, then each ``4 x 4`` transposed convolution with
    stride 2 and padding 1 doubles the resolution. LeakyReLU follows every layer but the last,
    whose output activation is applied by :meth:`Generator.forward`.

    Parameters
    ----------
    latent_dim
        ``Q``.
    image_shape
        ``(C, H, W)`` with ``H = W = first_size * 2^k``.
    channels
        Channels of the hidden layers: SVHN ``(128, 64, 32)``, CelebA ``(256, 128, 64, 32)``
        (the image channels ``C`` are appended). Their number fixes the resolution.
    first_size
        Side of the first layer's output (its kernel): the paper's 4; 7 makes 28x28 images
        with two hidden layers.
    leaky_slope
        Negative slope of the LeakyReLU activations.
    output_activation, generator
        As for :class:`KANGenerator`.
    """

    def __init__(
        self,
        latent_dim: int,
        image_shape: Sequence[int],
        *,
        channels: Sequence[int] = (128, 64, 32),
        leaky_slope: float = 0.2,
        output_activation: str = "sigmoid",
        generator: torch.Generator | None = None,
        first_size: int = 4,
    ) -> None:
        super().__init__(latent_dim, image_shape, output_activation)
        c, h, w = self.image_shape
        if first_size < 1:
            raise ValueError(f"first_size must be positive, got {first_size}")
        expected = first_size * 2 ** len(channels)
        if h != w or h != expected:
            raise ValueError(
                f"CNN generator with {len(channels)} hidden layers {tuple(channels)} makes "
                f"{expected}x{expected} images, but image_shape is {self.image_shape}"
            )
        widths = [latent_dim, *[int(ch) for ch in channels], c]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(itertools.pairwise(widths)):
            kernel, stride, padding = (first_size, 1, 0) if i == 0 else (4, 2, 1)
            layers.append(nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding))
            if i < len(widths) - 2:
                layers.append(nn.LeakyReLU(leaky_slope))
        self.net = nn.Sequential(*layers)
        self.channels = tuple(int(ch) for ch in channels)
        if generator is not None:
            self._init(generator)

    @torch.no_grad()
    def _init(self, generator: torch.Generator) -> None:
        # PyTorch's default init with an explicit generator, so seeds fully determine the model.
        for m in self.net:
            if isinstance(m, nn.ConvTranspose2d):
                fan_in = m.weight.shape[1] * m.weight[0, 0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                m.weight.uniform_(-bound, bound, generator=generator)
                m.bias.uniform_(-bound, bound, generator=generator)

    def logits(self, h: Tensor) -> Tensor:
        return self.net(h[:, :, None, None])
