"""Model adapters: one module per model family, registered under the families' ``model_type``.

An adapter knows how to load a family's checkpoint, build its inputs (processor, chat template),
where each row's image tokens sit in the sequence, and their geometry as
:class:`~attendseg.views.View` objects computed from what the processor returned
(``pixel_values``, ``image_grid_thw``, ``image_sizes``, tile counts). Capture and the Trace never
change per family: adding a family is adding a module here (or anywhere that is imported by
:func:`builtin_adapters`) whose class is decorated with :func:`register_adapter`.

Every module of this package is imported on first lookup, and so is
``attendseg.encoders.adapter`` (DiffLMM): all built-in families are found the same way, by the
``model_type`` of the checkpoint's ``config.json``.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import AttendsegError
from ..views import View

_ADAPTERS: dict[str, type["Adapter"]] = {}
_LOADED = False


@dataclass
class Prepared:
    """Model inputs for a batch, plus what capture needs to know about them.

    Attributes:
        inputs: keyword arguments for the model (``input_ids``, ``attention_mask``,
            ``pixel_values``, …), left-padded, on the model's device.
        key_index: per batch row, the ``[N_b]`` int64 sequence positions of its image tokens, in
            map order (rows may differ in ``N_b``).
        views: per batch row, the Views of its ``N_b`` image tokens.
        text_lengths: per batch row, the number of teacher-forced text tokens at the end of the
            sequence (empty list when generating).
        text_ids / text_offsets: per batch row, the teacher-forced token ids ``[r]`` and their
            character spans ``[r, 2]`` in the given text.
    """

    inputs: dict
    key_index: list[torch.Tensor]
    views: list[list[View]]
    text_lengths: list[int]
    text_ids: list[torch.Tensor]
    text_offsets: list[torch.Tensor]


class Adapter(ABC):
    """Family-specific glue between a checkpoint and capture.

    Class attributes describe the family (``attendseg models`` lists them):

    * ``family``: short name; ``model_types``: the ``config.json`` ``model_type`` values handled;
    * ``model_class``: the transformers class that loads it (default :meth:`load`);
    * ``hub_ids``: example checkpoints a user would pass; ``layout``: the view layout in words.

    Subclasses implement :attr:`language_model` and :meth:`row_views`; most need nothing else.
    """

    family: str = ""
    model_types: tuple[str, ...] = ()
    model_class: str = ""
    hub_ids: tuple[str, ...] = ()
    layout: str = ""
    #: Whether texts can be teacher-forced from a cached image + prompt prefix with plain 1-D
    #: position ids (:meth:`attendseg.attender.Attender.attend_texts`); families with multimodal
    #: rotary positions (M-RoPE) say False and are recomputed per text.
    shared_prefix: bool = False

    def __init__(self, model, processor):
        self.model = model
        self.processor = processor
        tokenizer = processor.tokenizer
        if tokenizer.pad_token is None:  # batches are left-padded: borrow a token that exists
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str, dtype: torch.dtype, device: torch.device, **options) -> "Adapter":
        """Load model and processor from a hub id or folder, ready for capture."""
        if options:
            raise AttendsegError(f"options {sorted(options)} are not used by {cls.family} models")
        import transformers

        model = getattr(transformers, cls.model_class).from_pretrained(path, dtype=dtype)
        return cls(model.to(device).eval(), load_processor(path))

    @property
    @abstractmethod
    def language_model(self) -> torch.nn.Module:
        """The text decoder whose attention is captured (a ``PreTrainedModel``)."""

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def image_token_id(self) -> int:
        """The id of the placeholder tokens that stand for image cells in ``input_ids``."""
        return self.model.config.image_token_id

    @property
    def image_token(self) -> str:
        """The placeholder text a user must not write in prompts (the processor places it)."""
        return getattr(self.processor, "image_token", None) or "<image>"

    def generation_defaults(self) -> dict:
        """``generate`` keyword defaults: never generate image placeholder or vision marker tokens
        (added to any tokens the checkpoint's generation config already suppresses)."""
        suppressed = list(getattr(self.model.generation_config, "suppress_tokens", None) or [])
        extra = [t for t in self.never_generated() if t is not None and t not in suppressed]
        return {"suppress_tokens": suppressed + extra} if extra else {}

    def never_generated(self) -> list[int]:
        """Token ids generation must not emit (default: the image placeholder)."""
        return [getattr(self.model.config, "image_token_id", None)]

    # ----------------------------------------------------------------------------- inputs
    def chat_prompt(self, prompt: str) -> str:
        """The family's chat template around one image and one user prompt, ready to answer."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def encode(self, images: list[Image.Image], chats: list[str]):
        """The processor's output for one image per chat prompt (a ``BatchFeature``)."""
        return self.processor(images=images, text=chats, return_tensors="pt", padding=True)

    @abstractmethod
    def row_views(self, batch, row: int, image: Image.Image) -> list[View]:
        """The Views of batch row ``row``'s image tokens, from the processor's output ``batch``
        (``image`` is the original image: its size is the frame the Views map to)."""

    def image_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[N_b]`` positions of the image-cell tokens in one row's ``[S]`` ids, in map order."""
        return torch.nonzero(input_ids == self.image_token_id).squeeze(1)

    def prepare(self, images: list[Image.Image], prompts: list[str],
                texts: list[str] | None = None) -> Prepared:
        """Inputs for one batch: one image and one user prompt per row; with ``texts``, each
        row's text is appended after the assistant turn for teacher forcing."""
        tokenizer = self.tokenizer
        tokenizer.padding_side = "left"
        for what, values in (("prompt", prompts), ("text", texts or [])):
            if any(self.image_token in v for v in values):
                raise AttendsegError(f"the {what} contains {self.image_token!r}: attendseg places the image "
                                     f"itself; write the {what} without it")
        batch = self.encode(images, [self.chat_prompt(p) for p in prompts])
        text_ids, text_offsets = [], []
        if texts is not None:
            for text in texts:
                ids, offsets = self.text_tokens(text)
                text_ids.append(ids)
                text_offsets.append(offsets)
            append_text(batch, text_ids, tokenizer.pad_token_id)
        key_index = [self.image_positions(row) for row in batch["input_ids"]]
        views = [self.row_views(batch, b, image) for b, image in enumerate(images)]
        for keys, row_views in zip(key_index, views):
            expected = sum(v.n_tokens for v in row_views)
            if keys.numel() != expected:
                raise AttendsegError(
                    f"{keys.numel()} image tokens in the sequence, but the processor's views hold {expected}: "
                    f"unsupported processor or model settings for the {self.family} adapter")
        device = self.model.device
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        for name in ("pixel_values", "pixel_values_videos"):
            if name in inputs and inputs[name].is_floating_point():
                inputs[name] = inputs[name].to(self.model.dtype)
        return Prepared(inputs=inputs, key_index=key_index, views=views,
                        text_lengths=[len(t) for t in text_ids], text_ids=text_ids, text_offsets=text_offsets)


    def text_tokens(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A teacher-forced text's ``[r]`` token ids and ``[r, 2]`` character spans (no special
        tokens: the text continues the assistant turn)."""
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return (torch.tensor(encoded["input_ids"], dtype=torch.long),
                torch.tensor(encoded["offset_mapping"], dtype=torch.long).view(-1, 2))


def append_text(batch, text_ids: list[torch.Tensor], pad_id: int) -> None:
    """Append each row's ``[r_b]`` text ids after its (left-padded) prompt, re-left-padded, in
    place. Every other per-token tensor of ``batch`` (``[B, S]``, e.g. ``attention_mask``,
    ``mm_token_type_ids``) is extended alike: 1 in the attention mask, 0 elsewhere."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    per_token = [k for k, v in batch.items()
                 if k != "input_ids" and isinstance(v, torch.Tensor) and v.shape == ids.shape]
    lengths = [int(m.sum()) + len(t) for m, t in zip(mask, text_ids)]
    width = max(lengths)
    out = {k: torch.zeros(len(text_ids), width, dtype=batch[k].dtype) for k in per_token}
    out_ids = torch.full((len(text_ids), width), pad_id, dtype=ids.dtype)
    for b, (row_mask, text) in enumerate(zip(mask, text_ids)):
        start = width - lengths[b]
        out_ids[b, start:] = torch.cat([ids[b][row_mask], text.to(ids.dtype)])
        for k in per_token:
            tail = torch.ones(len(text), dtype=batch[k].dtype) if k == "attention_mask" else \
                torch.zeros(len(text), dtype=batch[k].dtype)
            out[k][b, start:] = torch.cat([batch[k][b][row_mask], tail])
    batch["input_ids"] = out_ids
    for k in per_token:
        batch[k] = out[k]


# --------------------------------------------------------------------------------- processors
def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def without_video(processor_class: type) -> type:
    """A subclass of a multimodal processor class that has no video processor.

    Qwen2/2.5/3-VL, LLaVA-OneVision and InternVL processors hold a video processor, which needs
    torchvision; images never use it. The subclass declares only the other sub-processors, so
    ``from_pretrained`` / ``save_pretrained`` / ``__call__`` work on the same files without it.
    Its ``__init__`` shows the original signature less ``video_processor`` and accepts the
    original's settings from ``processor_config.json``, because transformers reads the signature
    to know which settings to save and load (e.g. LLaVA-OneVision's ``num_image_tokens``).
    """
    import inspect

    signature = inspect.signature(processor_class.__init__)
    kept = [p for name, p in signature.parameters.items() if name != "video_processor"]

    class NoVideo(processor_class):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            processor_class.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

        @staticmethod
        def validate_init_kwargs(processor_config, valid_kwargs):
            names = [*valid_kwargs, *(p.name for p in kept[1:] if p.kind is p.POSITIONAL_OR_KEYWORD)]
            return processor_class.validate_init_kwargs(processor_config, names)

    NoVideo.__init__.__signature__ = signature.replace(parameters=kept)
    NoVideo.__name__ = NoVideo.__qualname__ = processor_class.__name__
    NoVideo.__module__ = processor_class.__module__
    return NoVideo


def processor_class_for(path: str) -> type | None:
    """The processor class a checkpoint names (``processor_config.json``), else the one
    transformers maps its ``model_type`` to; None when neither says."""
    import json

    import transformers
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES
    from transformers.utils import cached_file

    for filename in ("processor_config.json", "config.json"):
        try:
            found = cached_file(path, filename, _raise_exceptions_for_missing_entries=False)
        except OSError:
            found = None
        if found is None:
            continue
        with open(found) as f:
            data = json.load(f)
        name = data.get("processor_class") or PROCESSOR_MAPPING_NAMES.get(data.get("model_type"))
        if name:
            return getattr(transformers, name, None)
    return None


def load_processor(path: str):
    """The checkpoint's processor, the way ``AutoProcessor`` loads it; where torchvision is
    missing and the processor holds a video processor, the same class without its video part
    (see :func:`without_video`)."""
    from transformers import AutoProcessor

    try:
        if not has_torchvision():
            cls = processor_class_for(path)
            if cls is not None and "video_processor" in cls.get_attributes():
                return without_video(cls).from_pretrained(path)
        return AutoProcessor.from_pretrained(path)
    except (OSError, ValueError, TypeError) as error:
        raise AttendsegError(f"could not load the processor of {path}: {str(error).splitlines()[0]} "
                             f"(a checkpoint needs its tokenizer and image processor files)") from None


# --------------------------------------------------------------------------------- registry
def register_adapter(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter the handler of its ``model_types``."""
    if not cls.model_types:
        raise ValueError(f"{cls.__name__} declares no model_types")
    for model_type in cls.model_types:
        _ADAPTERS[model_type] = cls
    return cls


def builtin_adapters() -> None:
    """Import every built-in adapter module once (each registers itself)."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    importlib.import_module("attendseg.encoders.adapter")


def adapters() -> list[type[Adapter]]:
    """The registered adapter classes, one per family, sorted by family name."""
    builtin_adapters()
    return sorted(set(_ADAPTERS.values()), key=lambda cls: cls.family)


def available_adapters() -> list[str]:
    return [cls.family for cls in adapters()]


def adapter_for(model_type: str | None, architectures=()) -> type[Adapter]:
    """The adapter class registered for ``model_type``; :class:`AttendsegError` if none is."""
    builtin_adapters()
    if model_type in _ADAPTERS:
        return _ADAPTERS[model_type]
    arch = ", ".join(architectures or []) or str(model_type)
    supported = "; ".join(f"{cls.family} ({', '.join(cls.model_types)})" for cls in adapters())
    raise AttendsegError(f"attendseg has no adapter for this model's architecture ({arch}); "
                         f"supported families (model types): {supported}")
