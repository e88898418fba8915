"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL (``Qwen2VLForConditionalGeneration`` and kin): one
dynamic-resolution grid of 2 × 2 merged patches per image.

Geometry. The image processor's ``smart_resize`` rounds the height and the width, each on its
own, to a multiple of ``patch_size × merge_size`` (28 px for Qwen2/2.5-VL, 32 px for Qwen3-VL),
then scales both by one factor into ``[min_pixels, max_pixels]`` (down with ``floor``, up with
``ceil``), and resizes the *whole* image to that size: no crop, no pad, but the aspect ratio
changes slightly (each axis has its own scale). So the grid covers exactly the whole original
image, box ``(0, 0, W, H)``, and a cell is ``W / w`` by ``H / h`` original pixels (not square
in general). The grid is read from the processor's output: ``image_grid_thw[b] = (1, H_p, W_p)``
in patches, merged to ``(H_p / 2, W_p / 2)`` tokens, row-major (``prod(grid_thw) / 4`` tokens).

Sequence. ``<|vision_start|>`` + ``<|image_pad|>`` × N + ``<|vision_end|>``: only the pad tokens
are image cells; none of the vision tokens (nor ``<|video_pad|>``) may be generated or written by
the user. M-RoPE positions are left to the model: it computes them from ``mm_token_type_ids``
(returned by the processor and extended with text type 0 for teacher-forced text by
:func:`attendseg.adapters.append_text`), ``image_grid_thw`` and the attention mask. Qwen3-VL's
deepstack adds visual features to the hidden states *between* the first decoder layers, never
inside attention, so capture is unaffected.

Limits. ``smart_resize`` resizes any image into ``[min_pixels, max_pixels]`` (tiny images are
upscaled, huge ones downscaled: no error); it refuses only an aspect ratio above 200, which
:meth:`QwenVLAdapter.encode` reports as one line.
"""

from __future__ import annotations

from ..errors import AttendsegError
from ..views import View
from . import Adapter, register_adapter

#: Vision marker tokens of the family besides the image / video pad tokens (``<|vision_pad|>``
#: exists in the released vocabularies but is used by neither processor).
MARKERS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


class QwenVLAdapter(Adapter):
    """Shared by the three Qwen-VL generations (they differ in the vision tower only)."""

    layout = ("one grid of 2 × 2 merged patches at dynamic resolution (image_grid_thw / 2), "
              "the whole image (smart_resize: no crop, no pad)")

    @classmethod
    def load(cls, path, dtype, device, **options):
        video_only(path)
        return super().load(path, dtype, device, **options)

    @property
    def language_model(self):
        return self.model.model.language_model

    def vision_tokens(self) -> dict[str, int]:
        """The family's vision special tokens present in the vocabulary: text → id."""
        config = self.model.config
        found = {self.processor.image_token: config.image_token_id,
                 getattr(self.processor, "video_token", "<|video_pad|>"): config.video_token_id}
        for token in MARKERS:
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != self.tokenizer.unk_token_id:
                found[token] = token_id
        return found

    def never_generated(self) -> list[int]:
        config = self.model.config
        return sorted({*self.vision_tokens().values(), config.vision_start_token_id, config.vision_end_token_id})

    def prepare(self, images, prompts, texts=None):
        for what, values in (("prompt", prompts), ("text", texts or [])):
            for token in self.vision_tokens():
                if any(token in v for v in values):
                    raise AttendsegError(f"the {what} contains {token!r}: attendseg places the image and its "
                                         f"vision markers itself; write the {what} without it")
        return super().prepare(images, prompts, texts)

    def encode(self, images, chats):
        try:
            return super().encode(images, chats)
        except ValueError as error:
            if "aspect ratio" not in str(error):
                raise
            sizes = ", ".join(f"{w}×{h}" for w, h in (image.size for image in images)
                              if max(w, h) / min(w, h) > 200)
            raise AttendsegError(f"image {sizes} is too elongated for {self.family}: its processor "
                                 f"(smart_resize) needs an aspect ratio of at most 200; crop it or pad it") from None

    def row_views(self, batch, row, image) -> list[View]:
        """One View: the merged grid of row ``row``'s ``image_grid_thw`` over the whole image."""
        t, h, w = (int(v) for v in batch["image_grid_thw"][row])
        merge = self.model.config.vision_config.spatial_merge_size
        if t != 1 or h % merge or w % merge:
            raise AttendsegError(f"image_grid_thw {(t, h, w)} is not one image frame of {merge} × {merge} "
                                 f"merged patches: unsupported processor settings for {self.family}")
        width, height = image.size
        return [View(start=0, grid=(h // merge, w // merge), box=(0, 0, width, height))]


def video_only(path: str) -> None:
    """Refuse a checkpoint whose processor has a video processor but no image processor
    (``video_preprocessor_config.json`` or a nested ``video_processor`` entry, and neither
    ``preprocessor_config.json`` nor a nested ``image_processor``): attendseg grounds images."""
    import json

    from transformers.utils import cached_file

    def find(filename):
        try:
            return cached_file(path, filename, _raise_exceptions_for_missing_entries=False)
        except OSError:
            return None

    nested = {}
    if found := find("processor_config.json"):
        with open(found) as f:
            nested = json.load(f)
    video = "video_processor" in nested or find("video_preprocessor_config.json")
    image = "image_processor" in nested or find("preprocessor_config.json")
    if video and not image:
        raise AttendsegError(f"{path} has a video processor but no image processor: attendseg grounds "
                             f"images; use the image-capable checkpoint (with preprocessor_config.json)")


@register_adapter
class Qwen2VLAdapter(QwenVLAdapter):
    family = "qwen2_vl"
    model_types = ("qwen2_vl",)
    model_class = "Qwen2VLForConditionalGeneration"
    hub_ids = ("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct")


@register_adapter
class Qwen2_5_VLAdapter(QwenVLAdapter):
    family = "qwen2_5_vl"
    model_types = ("qwen2_5_vl",)
    model_class = "Qwen2_5_VLForConditionalGeneration"
    hub_ids = ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct")


@register_adapter
class Qwen3VLAdapter(QwenVLAdapter):
    family = "qwen3_vl"
    model_types = ("qwen3_vl",)
    model_class = "Qwen3VLForConditionalGeneration"
    hub_ids = ("Qwen/Qwen3-VL-4B-Instruct", "Qwen/Qwen3-VL-8B-Instruct")
