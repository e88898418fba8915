"""Model adapters: one module per model family, self-registering (like timm's model registry).

An adapter knows how to load a family's checkpoint, build its inputs (processor, chat template),
where the image tokens sit in the sequence, and their geometry as :class:`~attendseg.views.View`
objects. Capture itself never changes per family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import AttendsegError
from ..views import View

_ADAPTERS: dict[str, type["Adapter"]] = {}


@dataclass
class Prepared:
    """Model inputs for a batch, plus what capture needs to know about them.

    Attributes:
        inputs: keyword arguments for the model (``input_ids``, ``attention_mask``,
            ``pixel_values``, …), left-padded, on the model's device.
        key_index: ``[B, N]`` sequence positions of each row's image tokens, in map order.
        views: per batch row, the Views of its ``N`` image tokens.
        text_lengths: per batch row, the number of teacher-forced text tokens at the end of the
            sequence (empty list when generating).
        text_ids / text_offsets: per batch row, the teacher-forced token ids ``[r]`` and their
            character spans ``[r, 2]`` in the given text.
    """

    inputs: dict
    key_index: torch.Tensor
    views: list[list[View]]
    text_lengths: list[int]
    text_ids: list[torch.Tensor]
    text_offsets: list[torch.Tensor]


class Adapter(ABC):
    """Family-specific glue between a checkpoint and capture."""

    family: str = ""

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        tokenizer = processor.tokenizer
        if tokenizer.pad_token is None:  # batches are left-padded: borrow a token that exists
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token

    @classmethod
    @abstractmethod
    def matches(cls, config) -> bool:
        """Whether this adapter handles a checkpoint with this (transformers) config."""

    @classmethod
    @abstractmethod
    def load(cls, path: str, dtype: torch.dtype, device: torch.device) -> "Adapter":
        """Load model and processor from a hub id or folder, ready for capture."""

    @property
    @abstractmethod
    def language_model(self) -> torch.nn.Module:
        """The text decoder whose attention is captured (a ``PreTrainedModel``)."""

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    def generation_defaults(self) -> dict:
        """``generate`` keyword defaults: never generate the image placeholder token (added to
        any tokens the checkpoint's generation config already suppresses)."""
        image_token = getattr(self.model.config, "image_token_id", None)
        if image_token is None:
            return {}
        suppressed = list(getattr(self.model.generation_config, "suppress_tokens", None) or [])
        return {"suppress_tokens": suppressed + [image_token]}

    @abstractmethod
    def prepare(
        self, images: list[Image.Image], prompts: list[str], texts: list[str] | None = None
    ) -> Prepared:
        """Inputs for one batch: one image and one user prompt per row; with ``texts``, each
        row's text is appended after the assistant turn for teacher forcing."""


def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter discoverable by :func:`adapter_for`."""
    _ADAPTERS[cls.family] = cls
    return cls


def available_adapters() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_for(config) -> type[Adapter]:
    """The adapter class that handles ``config``; :class:`AttendsegError` if none does."""
    for cls in _ADAPTERS.values():
        if cls.matches(config):
            return cls
    arch = ", ".join(getattr(config, "architectures", None) or [getattr(config, "model_type", "?")])
    raise AttendsegError(
        f"attendseg has no adapter for this model's architecture ({arch}); "
        f"supported families: {', '.join(available_adapters())}"
    )


from . import llava  # noqa: E402,F401  (registers the built-in adapters)
