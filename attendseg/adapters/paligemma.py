"""PaliGemma 1 and 2 (``PaliGemmaForConditionalGeneration``): one square resize of the whole
image, one token grid, prefix-LM attention.

The processor squashes the whole image to the SigLIP input (224, 448 or 896 px, no crop, no
pad) and writes ``<image>×n <bos> prompt \\n``; the image tokens are the ``(side / patch)²``
patches, row-major. There is no chat template: the prompt is the task text ("caption en",
"detect cat", …). The image and the prompt (``token_type_ids`` 0) attend to each other
bidirectionally; the answer (1) is causal. A teacher-forced text is the answer: its
``token_type_ids`` are 1, as the processor's ``suffix`` and generation write them.
"""

from __future__ import annotations

from ..errors import AttendsegError
from ..views import View
from . import Adapter, Prepared, register_adapter


@register_adapter
class PaliGemmaAdapter(Adapter):
    family = "paligemma"
    model_types = ("paligemma",)
    model_class = "PaliGemmaForConditionalGeneration"
    hub_ids = ("google/paligemma-3b-mix-224", "google/paligemma2-3b-mix-224", "google/paligemma2-3b-mix-448",
               "google/paligemma2-10b-mix-448")
    layout = "one square grid (16 × 16 at 224 px, 32 × 32 at 448): the whole image squashed, no crop"

    @property
    def language_model(self):
        return self.model.model.language_model

    def chat_prompt(self, prompt: str) -> str:
        """PaliGemma has no chat template: the processor writes ``<image>×n <bos> prompt \\n``."""
        return self.image_token + prompt

    def encode(self, images, chats):
        batch = self.processor(images=images, text=chats, return_tensors="pt", padding=True)
        batch.pop("labels", None)  # training targets: not a model input here
        return batch

    def prepare(self, images, prompts, texts=None) -> Prepared:
        prepared = super().prepare(images, prompts, texts)
        types = prepared.inputs.get("token_type_ids")
        if types is not None:  # the appended texts are the causal answer (1), not the prefix (0)
            for b, length in enumerate(prepared.text_lengths):
                types[b, types.shape[1] - length:] = 1
        return prepared

    def row_views(self, batch, row, image) -> list[View]:
        """One grid: ``pixel_values`` ``[B, 3, H, W]`` over the tower's patch, covering the whole
        image (the processor resizes without keeping the aspect ratio)."""
        height, width = batch["pixel_values"].shape[-2:]
        if getattr(self.processor.image_processor, "do_center_crop", False):
            raise AttendsegError("a centre-cropping image processor is not supported by the paligemma adapter")
        patch = self.model.config.vision_config.patch_size
        grid = (height // patch, width // patch)  # the patches cover grid · patch of the pixels
        box = (0, 0, image.size[0] * grid[1] * patch / width, image.size[1] * grid[0] * patch / height)
        return [View(start=0, grid=grid, box=box)]
