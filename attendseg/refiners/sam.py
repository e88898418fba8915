"""``sam`` refiner: Segment Anything through transformers' ``SamModel`` + ``SamProcessor``.

Any SAM checkpoint, by hub id or local folder: ``facebook/sam-vit-huge`` (the paper's; ~2.5 GB,
GPU advised), ``facebook/sam-vit-large``, or ``facebook/sam-vit-base`` (~375 MB, the one to use on
CPU). Only transformers' own code is used — no ``segment_anything`` and no torchvision (without
torchvision, transformers loads SAM's PIL image-processor backend by itself).

Flow, as segment-anything's predictor: :meth:`SamRefiner.set_image` resizes/pads the image and
runs the ViT image encoder once (``get_image_embeddings``), cached; :meth:`SamRefiner.refine`
sends all prompts of the image through the prompt encoder and mask decoder in one batch
(``input_points`` shaped ``(1, n_prompts, n_points, 2)``, ``multimask_output=True``) and maps the
low-resolution masks back to the original size with ``SamProcessor.post_process_masks``.

Batching detail: prompts are grouped by their shape — number of points, box or not — and each
group is one decoder call (normally all prompts share one shape, e.g. one peak point each, so
there is exactly one call). Padding mixed prompts to a common point count (transformers' ``-10``
pad label) would change the decoder's attention and hence the masks; grouping keeps a batched
prompt's mask identical to the same prompt run alone.

Points: prompts carry continuous pixel coordinates (pixel centres ``col + 0.5``, see
:mod:`attendseg.refiners.base`); SAM's prompt encoder adds 0.5 to the coordinates it receives
(pixel index → centre) after the processor's resize scaling, so a point ``x`` is passed as
``x · s - 0.5`` with ``s`` the resize factor: it lands exactly at ``x · s`` in the resized frame.
Boxes likewise.

Mask choice among SAM's three multimask outputs (``choice``):

* ``"last"`` — output index 2, whatever SAM's IoU head says (the paper's: "usually the whole
  object").
* ``"best-iou"`` — the output with the highest predicted IoU.
* ``"whole"`` / ``"part"`` / ``"subpart"`` — the outputs sorted by mask area in the original
  image: largest / middle / smallest. (SAM's outputs are trained as subpart, part, whole in index
  order 0, 1, 2, but nothing enforces it; sorting by area makes the granularity explicit.)
* ``"single"`` — ``multimask_output=False``: SAM's single-mask token (for multi-point or box
  prompts, where SAM's authors recommend it).

Score: SAM's predicted IoU of the chosen mask.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import AttendsegError
from .base import MaskResult, Prompt, as_rgb

#: the paper's checkpoint
PAPER_SAM = "facebook/sam-vit-huge"
#: the smallest official SAM, for CPU runs
CPU_SAM = "facebook/sam-vit-base"
CHOICES = ("last", "best-iou", "whole", "part", "subpart", "single")


def load_sam(model: str | Path, device=None, dtype=None):
    """Load ``(SamModel, SamProcessor)`` from a hub id or a local folder.

    Raises:
        AttendsegError: the checkpoint cannot be found / read, or it is not a SAM checkpoint.
    """
    import torch
    from transformers import AutoConfig, SamModel, SamProcessor

    from ..devices import resolve_device, resolve_dtype
    from ..hub import looks_local, resolve

    name = str(model)
    if looks_local(name) and not Path(name).expanduser().is_dir():
        raise AttendsegError(f"cannot load SAM checkpoint {name!r}: no such folder")
    name = resolve(name, "SAM")  # a hub id fails within seconds when the hub is out of reach
    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as e:  # any failure to read a checkpoint is the user's to fix
        raise AttendsegError(f"cannot load SAM checkpoint {name!r}: {e}") from e
    if getattr(config, "model_type", None) != "sam":
        raise AttendsegError(
            f"{name!r} is not a SAM checkpoint (model_type {getattr(config, 'model_type', None)!r}); "
            f"use e.g. {PAPER_SAM!r} or {CPU_SAM!r}"
        )
    try:
        sam = SamModel.from_pretrained(name, dtype=resolve_dtype(dtype or torch.float32))
        processor = SamProcessor.from_pretrained(name)
    except Exception as e:  # any failure to read a checkpoint is the user's to fix
        raise AttendsegError(f"cannot load SAM checkpoint {name!r}: {e}") from e
    return sam.to(resolve_device(device)).eval(), processor


class SamRefiner:
    """SAM as a refiner (see the module docstring).

    Args:
        model: hub id or folder of a SAM checkpoint, or a loaded ``SamModel`` (then pass
            ``processor`` too).
        processor: a ``SamProcessor``; loaded from ``model`` when it is a name.
        choice: ``"last"`` (default, the paper's) | ``"best-iou"`` | ``"whole"`` | ``"part"`` |
            ``"subpart"`` | ``"single"``.
        device: ``"cuda"`` when available, else ``"cpu"`` by default.
        dtype: model dtype (``"float32"`` default, ``"float16"``, ``"bfloat16"``); masks are
            post-processed in float32.
        mask_threshold: logit threshold for the binary masks (SAM's 0.0).
        max_batch: most prompts per decoder call (memory bound for huge prompt counts).
    """

    name = "sam"

    def __init__(
        self,
        model=PAPER_SAM,
        processor=None,
        choice: str = "last",
        device=None,
        dtype=None,
        mask_threshold: float = 0.0,
        max_batch: int = 64,
    ):
        import torch

        if choice not in CHOICES:
            raise AttendsegError(f"unknown SAM mask choice {choice!r}; choose one of {CHOICES}")
        self.choice = choice
        self.mask_threshold = float(mask_threshold)
        self.max_batch = int(max_batch)
        if isinstance(model, (str, Path)):
            self.model, loaded = load_sam(model, device=device, dtype=dtype)
            self.processor = processor or loaded
            self.model_id = str(model)
        else:
            if processor is None:
                raise AttendsegError("pass the SamProcessor along with a loaded SamModel")
            self.model, self.processor = model, processor
            if device is not None or dtype is not None:
                from ..devices import resolve_dtype  # torch: imported only when a model is used

                self.model = self.model.to(device=device, dtype=resolve_dtype(dtype) if dtype else None)
            self.model.eval()
            self.model_id = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
        self.device = next(self.model.parameters()).device
        self.dtype = next(self.model.parameters()).dtype
        self._torch = torch
        self._embeddings = None
        self._original_size: tuple[int, int] | None = None  # (H, W)
        self._reshaped_size: tuple[int, int] | None = None  # (h, w) before padding

    # ------------------------------------------------------------------------------ image
    def set_image(self, image: np.ndarray) -> None:
        """Preprocess ``image`` (``[H, W, 3]`` uint8 RGB) and cache its SAM image embedding."""
        rgb = as_rgb(image)
        inputs = self.processor(images=rgb, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        with self._torch.inference_mode():
            self._embeddings = self.model.get_image_embeddings(pixel_values)
        self._original_size = tuple(int(v) for v in inputs["original_sizes"][0].tolist())
        self._reshaped_size = tuple(int(v) for v in inputs["reshaped_input_sizes"][0].tolist())

    @property
    def image_embeddings(self):
        """The cached ``[1, C, h, w]`` image embedding (None before :meth:`set_image`)."""
        return self._embeddings

    def _scale(self) -> tuple[float, float]:
        (H, W), (h, w) = self._original_size, self._reshaped_size
        return w / W, h / H

    # ------------------------------------------------------------------------------ prompts
    def refine(self, prompts: list[Prompt]) -> list[MaskResult]:
        """One :class:`MaskResult` per prompt: ``[H, W]`` bool mask at the original size and
        SAM's predicted IoU. A prompt with neither points nor box gets an empty mask, score 0."""
        if self._embeddings is None:
            raise AttendsegError("call set_image(image) before refine(prompts)")
        H, W = self._original_size
        results: list[MaskResult | None] = [None] * len(prompts)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, p in enumerate(prompts):
            if len(p.points) == 0 and p.box is None:
                results[i] = MaskResult(mask=np.zeros((H, W), dtype=bool), score=0.0)
                continue
            groups.setdefault((len(p.points), p.box is not None), []).append(i)
        for (n_points, has_box), members in groups.items():
            for k in range(0, len(members), self.max_batch):
                chunk = members[k : k + self.max_batch]
                for i, res in zip(chunk, self._decode([prompts[i] for i in chunk], n_points, has_box)):
                    results[i] = res
        return results  # type: ignore[return-value]

    def decode_logits(self, prompts: list[Prompt]):
        """Low-level: one decoder call for prompts of one shape (same point count, all with or all
        without a box). Returns ``(low_res_logits [n, K, 256, 256], iou [n, K])`` torch tensors,
        ``K = 1`` for ``choice="single"`` else 3."""
        torch = self._torch
        n_points = len(prompts[0].points)
        has_box = prompts[0].box is not None
        if any(len(p.points) != n_points or (p.box is not None) != has_box for p in prompts):
            raise ValueError("decode_logits needs prompts of one shape; use refine() for mixed prompts")
        sx, sy = self._scale()
        scale = np.array([sx, sy])
        kwargs = {}
        if n_points:
            pts = np.stack([p.points * scale - 0.5 for p in prompts])  # [n, P, 2]
            labels = np.stack([p.labels for p in prompts])  # [n, P]
            kwargs["input_points"] = torch.as_tensor(pts[None], dtype=self.dtype, device=self.device)
            kwargs["input_labels"] = torch.as_tensor(labels[None], dtype=torch.long, device=self.device)
        if has_box:
            boxes = np.stack([p.box * np.tile(scale, 2) - 0.5 for p in prompts])  # [n, 4]
            kwargs["input_boxes"] = torch.as_tensor(boxes[None], dtype=self.dtype, device=self.device)
        with torch.inference_mode():
            out = self.model(
                image_embeddings=self._embeddings,
                multimask_output=self.choice != "single",
                **kwargs,
            )
        return out.pred_masks[0].float(), out.iou_scores[0].float()

    def _decode(self, prompts: list[Prompt], n_points: int, has_box: bool) -> list[MaskResult]:
        logits, iou = self.decode_logits(prompts)
        results = []
        for j in range(len(prompts)):
            masks = self.processor.post_process_masks(
                [logits[j : j + 1].cpu()],
                [self._original_size],
                [self._reshaped_size],
                mask_threshold=self.mask_threshold,
                binarize=True,
            )[0][0]  # [K, H, W] bool
            scores = iou[j].cpu().numpy()
            k = self._choose(masks, scores)
            results.append(MaskResult(mask=masks[k].numpy().astype(bool), score=float(scores[k]), index=k))
        return results

    def _choose(self, masks, scores: np.ndarray) -> int:
        if self.choice == "single":
            return 0
        if self.choice == "last":
            return masks.shape[0] - 1
        if self.choice == "best-iou":
            return int(np.argmax(scores))
        areas = masks.flatten(1).sum(1).numpy()
        order = np.argsort(-areas, kind="stable")  # largest first
        rank = {"whole": 0, "part": len(order) // 2, "subpart": len(order) - 1}[self.choice]
        return int(order[rank])
