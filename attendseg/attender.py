"""``attendseg.load`` and the :class:`Attender` session: run a model with capture on.

```python
import attendseg
attender = attendseg.load("llava-hf/llava-1.5-7b-hf")           # hub id or local folder
trace = attender.attend("dog.jpg", "Describe the image in detail.")
trace.token_maps()        # [T, N]: per generated token, attention over the 576 image tokens
```
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from . import capture
from .adapters import Adapter, adapter_for
from .errors import AttendsegError
from .images import load_image
from .tokens import decode_with_offsets
from .trace import Trace

ROWS = ("predicting", "own")

#: ``generate`` options capture cannot follow (several rows per step, or chunked prefill).
UNSUPPORTED_GENERATE_OPTIONS = ("assistant_model", "prompt_lookup_num_tokens", "prefill_chunk_size")
#: Set on every capture: one sequence per image, plain tensors back, and no compilation (the
#: capture function has Python side effects that a compiled graph would skip).
FIXED_GENERATE_OPTIONS = {"num_beams": 1, "num_return_sequences": 1, "return_dict_in_generate": False,
                          "disable_compile": True}


def _check_generate_options(options: dict) -> None:
    for name in UNSUPPORTED_GENERATE_OPTIONS:
        if options.get(name) is not None:
            raise AttendsegError(f"{name} is not supported: capture records one query row per generated token")
    for name, value in FIXED_GENERATE_OPTIONS.items():
        if name in options and options[name] != value:
            raise AttendsegError(f"{name}={options[name]!r} is not supported with capture (it uses {value!r})")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device) -> torch.device:
    """``None`` → CUDA when available, else CPU; a bad or unavailable device is an error."""
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise AttendsegError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AttendsegError(f"device {str(device)!r} requested, but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise AttendsegError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type not in ("cpu", "mps", "xpu"):
        raise AttendsegError(f"unsupported device {str(device)!r}")
    return device


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    """``None`` → bfloat16 on CUDA (float16 where bf16 is unsupported), float32 on CPU."""
    if dtype is None:
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise AttendsegError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


def load(model: str | os.PathLike, device=None, dtype=None, **options) -> "Attender":
    """Load a multimodal model for attention capture.

    Args:
        model: a hub id (``"llava-hf/llava-1.5-7b-hf"``) or a local checkpoint folder.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, … (default: CUDA when available).
        dtype: ``torch.float32`` / ``"bf16"`` / … (default: bf16 on CUDA, fp32 on CPU).
        options: passed to special loaders: DiffLMM's ``base=`` (the LLM the LoRA adapter was
            trained on, e.g. ``"lmsys/vicuna-7b-v1.5"``), ``sd=``, ``clip=``, ``timestep=``, …
            (see :func:`attendseg.encoders.load_difflmm`).

    Raises:
        AttendsegError: the folder does not exist, the hub id is unreachable, no adapter
            handles the architecture, or the device is unknown or unavailable.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    name = str(model)
    adapter = _load_adapter(name, device, dtype, options)
    capture.enable(adapter.language_model)
    return Attender(adapter, model_id=name)


def _load_adapter(name: str, device, dtype, options) -> Adapter:
    path = Path(name).expanduser()
    looks_local = path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local and not path.exists():
        raise AttendsegError(f"model folder not found: {name}")
    if path.is_dir() and not (path / "config.json").exists():
        raise AttendsegError(f"{name} is not a model checkpoint folder (no config.json)")
    source = str(path) if path.exists() else name
    config = _read_config(source, name)
    cls = adapter_for(config.get("model_type"), config.get("architectures"))
    return cls.load(source, dtype=dtype, device=device, **options)


def _read_config(source: str, name: str) -> dict:
    """The checkpoint's ``config.json`` as a dict (read raw: some released layouts, e.g.
    DiffLMM's ``llava_llama``, are not readable by ``AutoConfig``)."""
    import json

    from transformers.utils import cached_file

    try:
        with open(cached_file(source, "config.json")) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise AttendsegError(
            f"could not load model {name!r}: it is not a local folder, and the hub copy is not "
            f"available (offline, or no such repository): {str(error).splitlines()[0]}"
        ) from None


def _indices(value, count: int, what: str) -> list[int] | None:
    """``"all"``/None → None; an index or a sequence of indices (negative from the end) → sorted
    unique indices in ``range(count)``."""
    if value is None or value == "all":
        return None
    if isinstance(value, str):
        raise AttendsegError(f"{what}s must be 'all', an index or a list of indices, got {value!r}")
    chosen = [value] if isinstance(value, int) else list(value)
    if not chosen or not all(isinstance(i, int) for i in chosen):
        raise AttendsegError(f"{what}s must be 'all', an index or a list of indices, got {value!r}")
    bad = [i for i in chosen if not -count <= i < count]
    if bad:
        raise AttendsegError(f"{what}s {bad} out of range: the model has {count} {what}s")
    return sorted({i % count for i in chosen})


def _layer_list(layers, n_layers: int) -> list[int]:
    return _indices(layers, n_layers, "layer") or list(range(n_layers))


def _head_list(heads, n_heads: int) -> list[int] | None:
    return _indices(heads, n_heads, "head")


class Attender:
    """A loaded model with capture enabled. Make one with :func:`load`.

    Capture options shared by :meth:`attend` and :meth:`attend_text`:
        layers: ``"all"`` (default), a layer index, or a sequence/range of indices (negative
            indices count from the end).
        heads: ``"all"`` (default) or a sequence of head indices.
        per_layer, per_head: keep layers / heads separately instead of averaging them
            (``Trace.maps`` is ``[T, L, H, N]``).
        batch_size: images per model call (default: all at once).
    """

    def __init__(self, adapter: Adapter, model_id: str = ""):
        self.adapter = adapter
        self.model = adapter.model
        self.processor = adapter.processor
        self.model_id = model_id
        text_config = self.adapter.language_model.config
        self.n_layers = text_config.num_hidden_layers
        self.n_heads = text_config.num_attention_heads

    def __repr__(self):
        return f"Attender({self.model_id!r}, family={self.adapter.family}, device={self.model.device})"

    # ----------------------------------------------------------------------------- public
    def attend(self, images, prompt, max_new_tokens: int = 128, layers="all", heads="all",
               per_layer: bool = False, per_head: bool = False, batch_size: int | None = None,
               progress: bool = False, **generate_kwargs):
        """Generate an answer per image (greedy by default) and record its attention.

        Args:
            images: one image (path, PIL image, array) or a list of them.
            prompt: the user prompt, or one per image.
            max_new_tokens: upper bound on the answer length (> 0).

        Returns:
            A :class:`Trace` (one image) or a list of them: ``maps[t]`` is the attention of the
            query that predicts generated token ``t``.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
            raise AttendsegError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        _check_generate_options(generate_kwargs)
        return self._run(images, prompt, None, "predicting", layers, heads, per_layer, per_head,
                         batch_size, progress, dict(max_new_tokens=max_new_tokens, **generate_kwargs))

    def attend_text(self, images, prompt, text, rows: str = "predicting", layers="all",
                    heads="all", per_layer: bool = False, per_head: bool = False,
                    batch_size: int | None = None, progress: bool = False):
        """Teacher-force ``text`` as the answer and record the attention of its tokens.

        Args:
            text: the answer text, or one per image (a caption, a referring expression).
            rows: ``"predicting"`` — the query before each text token (as in generation) — or
                ``"own"`` — each token's own position.
        """
        if rows not in ROWS:
            raise AttendsegError(f"rows must be one of {ROWS}, got {rows!r}")
        return self._run(images, prompt, text, rows, layers, heads, per_layer, per_head,
                         batch_size, progress, None)

    def attend_texts(self, image, prompt: str, texts: Sequence[str], rows: str = "predicting", layers="all",
                     heads="all", per_layer: bool = False, per_head: bool = False,
                     batch_size: int | None = None) -> list[Trace]:
        """Teacher-force several texts on one image, encoding the image and prompt once.

        The prefix (image + chat prompt, all but its last token) runs once with a KV cache; each
        batch of texts then runs from a copy of that cache: one row per text, ``[last prompt
        token, text tokens]``, left-padded within the batch, with position ids continuing the
        prefix's. The traces equal ``attend_text(image, prompt, text)`` per text (to float
        rounding). Families whose adapter says ``shared_prefix = False`` (multimodal rotary
        positions) recompute image + prompt per text instead.

        Args:
            image: one image; prompt: one prompt; texts: the answers to teacher-force.
            batch_size: texts per model call (default: all at once).

        Returns:
            one :class:`Trace` per text, in order.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise AttendsegError("no texts given")
        texts = _per_image(texts, len(texts), "text")
        if rows not in ROWS:
            raise AttendsegError(f"rows must be one of {ROWS}, got {rows!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise AttendsegError(f"batch_size must be a positive integer, got {batch_size!r}")
        pil = load_image(image)
        options = dict(rows=rows, layers=layers, heads=heads, per_layer=per_layer, per_head=per_head)
        if not self.adapter.shared_prefix:
            return self.attend_text([pil] * len(texts), prompt, texts, batch_size=batch_size, **options)
        layer_list = _layer_list(layers, self.n_layers)
        head_list = _head_list(heads, self.n_heads)
        prompt = _per_image(prompt, 1, "prompt")[0]
        if any(self.adapter.image_token in t for t in texts):
            raise AttendsegError(f"the text contains {self.adapter.image_token!r}: attendseg places the image "
                                 f"itself; write the text without it")
        prefix = self.adapter.prepare([pil], [prompt])
        cache = self._prefix_cache(prefix.inputs)
        size = batch_size or len(texts)
        traces = []
        for start in range(0, len(texts), size):
            chunk = texts[start:start + size]
            traces += self._run_from_prefix(pil, prompt, prefix, cache, chunk, rows, layer_list, head_list,
                                            per_layer, per_head)
        return traces

    def _prefix_cache(self, inputs: dict):
        """The KV cache of all but the last token of a one-row prefix (its last token is re-run
        with the texts: its row predicts their first token)."""
        trimmed = {k: (v[:, :-1] if isinstance(v, torch.Tensor) and v.shape == inputs["input_ids"].shape else v)
                   for k, v in inputs.items()}
        with torch.inference_mode():
            out = self.model(**trimmed, use_cache=True, logits_to_keep=1)
        return out["cache"] if "cache" in out else out["past_key_values"]  # renamed in transformers 5.2x

    def _cache_argument(self) -> str:
        """The forward argument that takes a KV cache (``cache``; ``past_key_values`` before
        transformers renamed it)."""
        import inspect

        return "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def _run_from_prefix(self, image, prompt, prefix, cache, texts, rows, layers, heads, per_layer,
                         per_head) -> list[Trace]:
        from transformers import DynamicCache

        device = self.model.device
        ids = prefix.inputs["input_ids"]
        past = ids.shape[1] - 1
        encoded = [self.adapter.text_tokens(t) for t in texts]
        lengths = [len(t) for t, _ in encoded]
        width = max(lengths)
        batch = len(texts)
        pad = self.adapter.tokenizer.pad_token_id
        chunk_ids = torch.full((batch, 1 + width), pad, dtype=torch.long)
        mask = torch.zeros((batch, past + 1 + width), dtype=torch.long)
        mask[:, :past] = 1
        positions = torch.full((batch, 1 + width), past, dtype=torch.long)
        for b, (text_ids, _) in enumerate(encoded):
            start = width - lengths[b]
            chunk_ids[b, start:] = torch.cat([ids[0, -1:].cpu(), text_ids])
            mask[b, past + start:] = 1
            positions[b, start:] = torch.arange(past, past + 1 + lengths[b])
        layers_kv = [(layer.keys.expand(batch, -1, -1, -1), layer.values.expand(batch, -1, -1, -1))
                     for layer in cache.layers]
        chunk_cache = DynamicCache(ddp_cache_data=layers_kv)
        n_rows, shift = width, int(rows == "predicting")
        recorder = capture.Recorder([prefix.key_index[0]] * batch, layers, heads, per_layer, per_head, n_rows, shift, past=past)
        with torch.inference_mode(), capture.recording(recorder):
            self.model(input_ids=chunk_ids.to(device), attention_mask=mask.to(device),
                       position_ids=positions.to(device), use_cache=True, logits_to_keep=1,
                       **{self._cache_argument(): chunk_cache})
        maps = recorder.maps()  # [B, width, L, H, N]
        common = dict(layers=tuple(layers), heads=tuple(heads or range(self.n_heads)), per_layer=per_layer,
                      per_head=per_head, model_id=self.model_id, mode="teacher", rows=rows)
        return [Trace(token_ids=text_ids, text=text, offsets=offsets,
                      maps=maps[b, width - lengths[b]:, ..., : recorder.n_keys[b]].clone(),
                      views=prefix.views[0], image_size=image.size, prompt=prompt, **common)
                for b, (text, (text_ids, offsets)) in enumerate(zip(texts, encoded))]

    # ----------------------------------------------------------------------------- engine
    def _run(self, images, prompt, text, rows, layers, heads, per_layer, per_head, batch_size,
             progress, generate_kwargs):
        single = not isinstance(images, (list, tuple))
        images = [images] if single else list(images)
        if not images:
            raise AttendsegError("no images given")
        prompts = _per_image(prompt, len(images), "prompt")
        texts = None if text is None else _per_image(text, len(images), "text")
        layer_list = _layer_list(layers, self.n_layers)
        head_list = _head_list(heads, self.n_heads)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise AttendsegError(f"batch_size must be a positive integer, got {batch_size!r}")
        size = batch_size or len(images)
        traces = []
        starts = range(0, len(images), size)
        if progress:
            from tqdm.auto import tqdm

            starts = tqdm(starts, desc="attend", unit="batch")
        for start in starts:
            chunk = slice(start, start + size)
            pil = [load_image(image) for image in images[chunk]]
            traces += self._run_batch(pil, prompts[chunk], None if texts is None else texts[chunk],
                                      rows, layer_list, head_list, per_layer, per_head, generate_kwargs)
        return traces[0] if single else traces

    def _run_batch(self, images, prompts, texts, rows, layers, heads, per_layer, per_head,
                   generate_kwargs) -> list[Trace]:
        prepared = self.adapter.prepare(images, prompts, texts)
        if texts is None:
            n_rows, shift = 1, 0
        else:
            n_rows, shift = max(prepared.text_lengths), int(rows == "predicting")
        recorder = capture.Recorder(prepared.key_index, layers, heads, per_layer, per_head, n_rows, shift)
        with torch.inference_mode(), capture.recording(recorder):
            if texts is None:
                tokenizer = self.adapter.tokenizer
                kwargs = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id,
                              **self.adapter.generation_defaults())
                kwargs.update(generate_kwargs)
                kwargs.update(FIXED_GENERATE_OPTIONS)
                sequences = self.model.generate(**prepared.inputs, **kwargs)
            else:
                self.model(**prepared.inputs, use_cache=False, logits_to_keep=1)
        maps = recorder.maps()  # [B, R, L, H, N_max]; row b's image tokens are the first n_keys[b]
        common = dict(layers=tuple(layers), heads=tuple(heads or range(self.n_heads)),
                      per_layer=per_layer, per_head=per_head, model_id=self.model_id,
                      mode="generate" if texts is None else "teacher", rows=rows)
        traces = []
        for b, image in enumerate(images):
            if texts is None:
                token_ids = self._answer_ids(sequences[b, prepared.inputs["input_ids"].shape[1]:],
                                             generate_kwargs.get("eos_token_id"))
                text, offsets = decode_with_offsets(self.adapter.tokenizer, token_ids)
                row_maps = maps[b, : len(token_ids), ..., : recorder.n_keys[b]].clone()
            else:
                token_ids, offsets, text = prepared.text_ids[b], prepared.text_offsets[b], texts[b]
                row_maps = maps[b, maps.shape[1] - len(token_ids):, ..., : recorder.n_keys[b]].clone()
            traces.append(Trace(token_ids=token_ids.cpu(), text=text, offsets=offsets, maps=row_maps,
                                views=prepared.views[b], image_size=image.size, prompt=prompts[b],
                                **common))
        return traces

    def _answer_ids(self, generated: torch.Tensor, eos=None) -> torch.Tensor:
        """Generated ids up to and including the first end-of-sequence token; trailing padding
        (rows of a batch that stopped early for another reason) is dropped."""
        eos = self.model.generation_config.eos_token_id if eos is None else eos
        eos = set([eos] if isinstance(eos, int) else (eos or []))
        ids = generated.tolist()
        for i, token in enumerate(ids):
            if token in eos:
                return generated[: i + 1]
        pad = self.adapter.tokenizer.pad_token_id
        end = len(ids)
        while end > 1 and ids[end - 1] == pad:
            end -= 1
        return generated[:end]


def _per_image(value, n: int, what: str) -> list[str]:
    values = [value] * n if isinstance(value, str) else list(value)
    if len(values) != n:
        raise AttendsegError(f"{len(values)} {what}s for {n} images")
    for v in values:
        if not isinstance(v, str) or not v.strip():
            raise AttendsegError(f"the {what} is empty" if isinstance(v, str) else f"{what} must be a string")
    return values
