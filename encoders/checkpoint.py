"""Loading DiffLMM: the authors' released layout (LoRA + non-LoRA trainables) or a saved folder.

The release (``Shengcao1006/difflmm-llava-v1.5-7b-lora``) is a LLaVA-1.5 training output:

- ``config.json``: Llama fields plus ``mm_*`` fields (``mm_projector_type: "SDCLIPBlock"``,
  the SD repo in ``mm_vision_tower``, the CLIP repo in ``mm_vision_sd_clip``, up-block, timestep,
  ensemble size, resolution, ...).
- ``adapter_config.json`` + ``adapter_model.safetensors`` / ``.bin``: a PEFT LoRA adapter on the
  base LLM (``lmsys/vicuna-7b-v1.5``), merged here as W ← W + (α / r) · B · A (α / √r with
  rsLoRA) — peft is not needed.
- ``non_lora_trainables.bin``: the projector and captioner (``...mm_projector.<name>``).

:func:`load_difflmm` assembles a :class:`DiffLMMForConditionalGeneration` from those, the base
LLM, Stable Diffusion (``unet/``, ``vae/``, ``scheduler/`` subfolders) and CLIP, each a hub id or
a local folder. A folder written by ``save_pretrained`` of a DiffLMM model loads directly.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from attendseg.devices import resolve_device, resolve_dtype
from attendseg.errors import AttendsegError
from attendseg.hub import looks_local, resolve, unavailable

from .configuration_difflmm import SD15_SCHEDULER, DiffLMMConfig, DiffLMMVisionConfig

__all__ = [
    "DEFAULT_BASE",
    "DEFAULT_CLIP",
    "DEFAULT_SD",
    "is_difflmm_checkpoint",
    "load_difflmm",
    "map_non_lora_trainables",
    "merge_lora",
    "read_lora_adapter",
]

logger = logging.getLogger(__name__)

DEFAULT_BASE = "lmsys/vicuna-7b-v1.5"
DEFAULT_SD = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_CLIP = "openai/clip-vit-large-patch14-336"
#: Hub ids recorded in released configs that have moved.
HUB_ALIASES = {
    "runwayml/stable-diffusion-v1-5": DEFAULT_SD,
}
PROJECTOR_TYPE = "SDCLIPBlock"


# --------------------------------------------------------------------------------------------
# files: local folder or hub repo
# --------------------------------------------------------------------------------------------
def _fetch(source: str | Path, filename: str, *, what: str, required: bool = True) -> Path | None:
    """Path of ``filename`` in a local folder or a hub repo (downloaded), else ``None``/error.

    A hub id goes through :func:`attendseg.hub.resolve` first: with the hub out of reach it is
    read from the cache, or fails within seconds saying so.
    """
    source = str(source)
    if not looks_local(source):
        source = resolve(source, what)
    if looks_local(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise AttendsegError(f"{what}: folder {source!r} does not exist")
        path = folder / filename
        if path.is_file():
            return path
        if required:
            raise AttendsegError(f"{what}: {filename} is missing in {source}")
        return None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=source, filename=filename))
    except LocalEntryNotFoundError as exc:  # not cached and no hub: a subclass of EntryNotFoundError
        raise unavailable(what, source, reason=str(exc).splitlines()[0]) from None
    except EntryNotFoundError:
        if required:
            raise AttendsegError(f"{what}: {filename} is missing in the hub repo {source!r}") from None
        return None
    except Exception as exc:  # offline, unknown repo, gated, network
        if not required and "404" in str(exc):
            return None
        raise AttendsegError(f"{what}: cannot fetch {filename} from {source!r} ({type(exc).__name__}: {exc})") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AttendsegError(f"cannot read {path}: {exc}") from None


def is_difflmm_checkpoint(path_or_config: str | Path | Mapping[str, Any] | Any) -> bool:
    """Whether a folder / hub id / config (dict or object) is a DiffLMM checkpoint.

    True for the released LLaVA-style layout (``mm_projector_type == "SDCLIPBlock"``) and for
    folders saved by :class:`DiffLMMForConditionalGeneration` (``model_type == "difflmm"``).
    Never raises for an unreadable source: it answers False.
    """
    cfg = path_or_config
    if isinstance(cfg, (str, Path)):
        try:
            path = _fetch(cfg, "config.json", what="DiffLMM check", required=False)
        except AttendsegError:
            return False
        if path is None:
            return False
        try:
            cfg = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return False
    if not isinstance(cfg, Mapping):
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg)
    return cfg.get("model_type") == DiffLMMConfig.model_type or cfg.get("mm_projector_type") == PROJECTOR_TYPE


# --------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------
_LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<which>[AB])(?:\.[\w-]+)?\.weight$")


def read_lora_adapter(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(adapter_config, weights)`` of a PEFT LoRA adapter folder or hub repo."""
    config_path = _fetch(folder, "adapter_config.json", what="LoRA adapter")
    config = _read_json(config_path)
    weights_path = _fetch(folder, "adapter_model.safetensors", what="LoRA adapter", required=False)
    if weights_path is not None:
        from safetensors.torch import load_file

        weights = load_file(str(weights_path))
    else:
        weights_path = _fetch(folder, "adapter_model.bin", what="LoRA adapter", required=False)
        if weights_path is None:
            raise AttendsegError(
                f"LoRA adapter: neither adapter_model.safetensors nor adapter_model.bin is in {folder}"
            )
        weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    return config, weights


def _pattern_value(name: str, pattern: Mapping[str, Any] | None, default):
    """PEFT ``rank_pattern`` / ``alpha_pattern`` lookup: the first key matching the module name."""
    for key, value in (pattern or {}).items():
        if re.match(rf"(.*\.)?{key}$", name):
            return value
    return default


def merge_lora(
    model: nn.Module,
    adapter_config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor],
    *,
    rename: Mapping[str, str] | None = None,
) -> list[str]:
    """Merge LoRA factors into ``model``'s linear weights in place: W ← W + s · B · A.

    ``s`` is ``lora_alpha / r`` (``lora_alpha / √r`` with ``use_rslora``), with PEFT's
    ``rank_pattern`` / ``alpha_pattern`` overrides.

    Args:
        model: the base model; module names must match the adapter keys after the
            ``base_model.model.`` prefix (e.g. ``model.layers.0.self_attn.q_proj`` for a
            ``LlamaForCausalLM``).
        rename: optional prefix renames applied to the adapter's module names first.

    Returns:
        The names of the merged modules.

    Raises:
        AttendsegError: unsupported adapter (not LoRA, DoRA, embedding LoRA), a target module the
            model lacks or that is not a linear layer, a shape mismatch, an A without its B.
    """
    cfg = dict(adapter_config)
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise AttendsegError(f"adapter type {cfg.get('peft_type')!r} is not supported (only LoRA)")
    if cfg.get("use_dora"):
        raise AttendsegError("DoRA adapters are not supported")
    r_default = int(cfg.get("r", 8))
    alpha_default = float(cfg.get("lora_alpha", r_default))
    fan_in_fan_out = bool(cfg.get("fan_in_fan_out", False))

    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        m = _LORA_KEY.match(key)
        if m is None:
            if "lora_embedding" in key or "lora_magnitude" in key:
                raise AttendsegError(f"LoRA adapter key {key!r} (embedding LoRA / DoRA) is not supported")
            logger.warning("ignoring non-LoRA adapter weight %s", key)
            continue
        name = m["module"]
        for old, new in (rename or {}).items():
            if name.startswith(old):
                name = new + name[len(old):]
                break
        pairs.setdefault(name, {})[m["which"]] = tensor
    if not pairs:
        raise AttendsegError("the LoRA adapter holds no lora_A / lora_B weights")

    # Every declared target module name must exist in the model.
    targets = cfg.get("target_modules")
    if isinstance(targets, (list, tuple)):
        leaf_names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        missing = [t for t in targets if t.rsplit(".", 1)[-1] not in leaf_names]
        if missing:
            raise AttendsegError(
                f"the LoRA adapter targets modules the base model lacks: {missing} "
                "(is this the adapter's base model?)"
            )

    merged = []
    for name, ab in sorted(pairs.items()):
        if set(ab) != {"A", "B"}:
            raise AttendsegError(f"LoRA weights of {name} lack lora_{'B' if 'A' in ab else 'A'}")
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise AttendsegError(
                f"LoRA target module {name!r} is not in the base model (is this the adapter's base model?)"
            ) from None
        if not isinstance(module, nn.Linear):
            raise AttendsegError(f"LoRA target {name!r} is a {type(module).__name__}, not a linear layer")
        a, b = ab["A"], ab["B"]
        r = _pattern_value(name, cfg.get("rank_pattern"), r_default)
        alpha = float(_pattern_value(name, cfg.get("alpha_pattern"), alpha_default))
        out_f, in_f = module.weight.shape
        if a.ndim != 2 or b.ndim != 2 or a.shape != (a.shape[0], in_f) or b.shape != (out_f, a.shape[0]):
            raise AttendsegError(
                f"LoRA shapes of {name} do not fit the base model: A {tuple(a.shape)}, B {tuple(b.shape)} "
                f"vs weight {tuple(module.weight.shape)} (is this the adapter's base model?)"
            )
        if a.shape[0] != int(r):
            logger.warning("LoRA rank of %s is %d, adapter_config says %d; using the weights' rank", name, a.shape[0], r)
            r = a.shape[0]
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        w = module.weight
        with torch.no_grad():
            delta = (b.to(w.device, torch.float32) @ a.to(w.device, torch.float32)) * scale
            if fan_in_fan_out:
                delta = delta.T
            w.copy_((w.float() + delta).to(w.dtype))
        merged.append(name)
    return merged


#: Base-LLM config fields that must equal the release's (its ``config.json`` carries the
#: language model's fields of the base it was trained on).
BASE_SIZE_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads")


def base_differences(release_config: Mapping[str, Any], base_config: Mapping[str, Any],
                     grown_vocabulary: bool = False) -> list[str]:
    """How a base LLM's ``config.json`` differs from the one a release was trained on.

    Compares the architecture (a release's ``model_type`` ``llava_<x>`` wants a base of
    ``model_type`` ``<x>``), the sizes (:data:`BASE_SIZE_FIELDS`; key-value heads default to
    attention heads) and the vocabulary size (the release's may be larger only when
    ``grown_vocabulary``: it carries its own embedding rows). Names are not compared: a renamed
    copy of the right base is the right base.

    Returns:
        One phrase per difference (``"num_hidden_layers 4 (the release's: 2)"``); empty when
        the base fits.
    """
    differences = []
    release_type = str(release_config.get("model_type") or "")
    wanted = release_type[len("llava_"):] if release_type.startswith("llava_") else None
    if wanted and base_config.get("model_type") != wanted:
        differences.append(f"architecture {base_config.get('model_type')!r} (the release's: {wanted!r})")

    def value(config, key):
        if key == "num_key_value_heads":
            return config.get(key) or config.get("num_attention_heads")
        return config.get(key)

    for key in BASE_SIZE_FIELDS:
        ours, theirs = value(base_config, key), value(release_config, key)
        if ours is not None and theirs is not None and ours != theirs:
            differences.append(f"{key} {ours} (the release's: {theirs})")
    ours, theirs = base_config.get("vocab_size"), release_config.get("vocab_size")
    if ours is not None and theirs is not None and ours != theirs and not (grown_vocabulary and theirs > ours):
        differences.append(f"vocab_size {ours} (the release's: {theirs})")
    return differences


def _check_base(release_config: Mapping[str, Any], adapter_config: Mapping[str, Any], base: str,
                base_config: Mapping[str, Any], grown_vocabulary: bool) -> None:
    """Refuse a base whose config differs from the release's; note a differing name."""
    differences = base_differences(release_config, base_config, grown_vocabulary)
    if differences:
        raise AttendsegError(
            f"the base {base!r} is not the LLM this release was trained on: " + "; ".join(differences)
            + " (pass the matching base, e.g. lmsys/vicuna-7b-v1.5 or a local copy of it)"
        )
    recorded = str(adapter_config.get("base_model_name_or_path") or "").rstrip("/")
    if recorded and Path(recorded).name.lower() not in str(base).lower():
        logger.warning("the release was trained on %r; using %r, whose config matches", recorded, base)


# --------------------------------------------------------------------------------------------
# non-LoRA trainables
# --------------------------------------------------------------------------------------------
def map_non_lora_trainables(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict, list[str]]:
    """Split ``non_lora_trainables.bin`` into ``(projector, language_model, ignored)``.

    Key handling follows the original loader: a leading ``base_model.`` is stripped, then, when
    some key starts with ``model.model.``, a leading ``model.`` of every key; ``model.mm_projector.<name>`` goes to the projector (``<name>``), other
    ``model.*`` / ``lm_head.*`` keys to the language model (``LlamaForCausalLM`` names); vision
    tower keys (frozen in training) and anything else are ignored.
    """
    projector, llm, ignored = {}, {}, []
    keys = {key: key[len("base_model."):] if key.startswith("base_model.") else key for key in state}
    if any(k.startswith("model.model.") for k in keys.values()):  # PEFT's extra `model.` level
        keys = {key: k[len("model."):] if k.startswith("model.") else k for key, k in keys.items()}
    for key, value in state.items():
        k = keys[key]
        if "mm_projector." in k:
            projector[k.split("mm_projector.", 1)[1]] = value
        elif k.startswith("model.vision_tower.") or "vision_tower" in k:
            ignored.append(key)
        elif k.startswith(("model.", "lm_head.")):
            llm[k] = value
        else:
            ignored.append(key)
    return projector, llm, ignored


def _load_projector(projector: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = projector.state_dict()
    fixed = {}
    for k, v in state.items():
        if k in own and v.shape != own[k].shape and v.numel() == own[k].numel() and k.endswith("_pe"):
            v = v.reshape(own[k].shape)  # positional embeddings saved as (1, N, D)
        fixed[k] = v
    missing = sorted(set(own) - set(fixed))
    unexpected = sorted(set(fixed) - set(own))
    bad = [f"{k}: {tuple(fixed[k].shape)} vs {tuple(own[k].shape)}" for k in own if k in fixed and fixed[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise AttendsegError(
            f"non_lora_trainables.bin in {source} does not fit the SDCLIPBlock projector: "
            + "; ".join(
                part
                for part in (
                    f"missing {missing}" if missing else "",
                    f"unexpected {unexpected}" if unexpected else "",
                    f"shape mismatch {bad}" if bad else "",
                )
                if part
            )
        )
    projector.load_state_dict({k: v.to(own[k].dtype) for k, v in fixed.items()}, strict=True)


# --------------------------------------------------------------------------------------------
# the loader
# --------------------------------------------------------------------------------------------
def _resolve_base(base: str | None, adapter_config: Mapping[str, Any]) -> str:
    if base is not None:
        return str(base)
    recorded = adapter_config.get("base_model_name_or_path")
    if recorded:
        recorded = str(recorded)
        if Path(recorded).expanduser().is_dir():
            return recorded
        if not looks_local(recorded):
            return recorded
        if Path(recorded.rstrip("/")).name == DEFAULT_BASE.split("/")[1]:
            return DEFAULT_BASE  # a training-machine path to the usual Vicuna
        raise AttendsegError(
            f"the LoRA adapter's base {recorded!r} is not reachable here; pass base= (a hub id or folder)"
        )
    return DEFAULT_BASE


def _vision_config_from_release(cfg: Mapping[str, Any], unet, vae, scheduler_config, clip_config, projector_state,
                                overrides: Mapping[str, Any]) -> DiffLMMVisionConfig:
    select = cfg.get("mm_vision_select_layer", 1)
    if isinstance(select, int) and select < 0:  # LLaVA's CLIP default leaked into an SD config
        select = 1
    sd_proj = projector_state.get("sd_proj_layer.0.weight")
    caption = projector_state.get("clip_projector.2.weight")
    settings = dict(
        unet_config=dict(unet.config),
        vae_config=dict(vae.config),
        scheduler_config=scheduler_config,
        clip_config=clip_config,
        up_block=select,
        timestep=int(cfg.get("mm_vision_sd_timestep", 100)),
        ensemble_size=int(cfg.get("mm_vision_sd_ensemble_size", 1)),
        image_size=int(cfg.get("mm_vision_resolution", 384)),
        implicit_caption=bool(cfg.get("mm_vision_sd_implicit_caption", True)),
        concat_clip=bool(cfg.get("mm_vision_sd_concat_clip", True)),
        caption_dim=int(caption.shape[0]) if caption is not None else int(cfg.get("mm_vision_sd_clip_proj_out", 768)),
    )
    if sd_proj is not None:
        settings["sd_proj_dim"] = int(sd_proj.shape[0])
    settings.update(overrides)
    return DiffLMMVisionConfig(**settings)


def _ensure_image_token(tokenizer, base_model) -> int:
    """Add ``<image>`` to the tokenizer if needed and grow the embeddings (mean-initialised rows)."""
    if "<image>" not in tokenizer.get_vocab():
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token  # LLaVA v1 pads with <unk>
    tokenizer.padding_side = "left"
    old = base_model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        new = int(math.ceil(len(tokenizer) / 64) * 64)
        base_model.resize_token_embeddings(new, mean_resizing=False)
        with torch.no_grad():
            for weight in (base_model.get_input_embeddings().weight, base_model.get_output_embeddings().weight):
                weight[old:] = weight[:old].float().mean(0).to(weight.dtype)
    return tokenizer.convert_tokens_to_ids("<image>")


def _check_sd(sd: str) -> None:
    _fetch(sd, "unet/config.json", what=f"Stable Diffusion {sd!r} has no UNet (unet/ subfolder)")
    _fetch(sd, "vae/config.json", what=f"Stable Diffusion {sd!r} has no VAE (vae/ subfolder)")


def _load_sd(sd: str, dtype):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    _check_sd(sd)
    try:
        unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet", torch_dtype=dtype)
        vae = AutoencoderKL.from_pretrained(sd, subfolder="vae", torch_dtype=dtype)
    except (OSError, EnvironmentError) as exc:
        raise AttendsegError(f"cannot load the UNet/VAE of {sd!r}: {exc}") from None
    sched_path = _fetch(sd, "scheduler/scheduler_config.json", what="scheduler", required=False)
    if sched_path is not None:
        scheduler_config = dict(DDPMScheduler.from_config(_read_json(sched_path)).config)
    else:
        logger.warning("%s has no scheduler/ subfolder: using SD-1.5's noise schedule", sd)
        scheduler_config = dict(SD15_SCHEDULER)
    return unet.eval(), vae.eval(), scheduler_config


def load_difflmm(
    path: str | Path,
    base: str | Path | None = None,
    sd: str | Path | None = None,
    clip: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str | dict | None = None,
    chat_template: str | None = None,
    check_base: bool = True,
    **vision_overrides,
):
    """Load a DiffLMM model and its processor.

    Args:
        path: the release folder / hub id (``Shengcao1006/difflmm-llava-v1.5-7b-lora``), or a
            folder saved by ``DiffLMMForConditionalGeneration.save_pretrained`` (then ``base``,
            ``sd`` and ``clip`` are not needed).
        base: the LLM the LoRA adapter goes on (default: the adapter's
            ``base_model_name_or_path``, else ``lmsys/vicuna-7b-v1.5``).
        sd: Stable Diffusion repo or folder with ``unet/``, ``vae/``, ``scheduler/`` (default:
            ``mm_vision_tower`` of ``config.json``; the retired ``runwayml`` id maps to its mirror).
        clip: CLIP repo or folder (default: ``mm_vision_sd_clip``, else ViT-L/14-336).
        device: default CUDA when available, else CPU.
        dtype: default bfloat16 on CUDA (float16 without bf16 support), float32 on CPU.
        attn_implementation: passed to ``set_attn_implementation`` (a string or a per-sub-config
            dict such as ``{"text_config": "eager"}``); the CLIP inside the vision tower always
            runs sdpa.
        chat_template: override of the processor's chat template (default: the base tokenizer's,
            else LLaVA-1.5's ``vicuna_v1`` format with its system prompt).
        check_base: refuse a base whose config (architecture, sizes, vocabulary) differs from
            the release's (:func:`base_differences`); a base under another name is accepted.
        vision_overrides: :class:`DiffLMMVisionConfig` fields to change (``timestep``,
            ``ensemble_size``, ``up_block``, ``deterministic``, ``seed``, ...).

    Returns:
        ``(model, processor)``: a :class:`DiffLMMForConditionalGeneration` in eval mode and a
        ``LlavaProcessor``.

    Raises:
        AttendsegError: not a DiffLMM checkpoint; missing adapter, ``non_lora_trainables.bin``,
            UNet or VAE; a LoRA adapter that does not fit the base; projector weights that do not
            fit.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel, GenerationConfig

    from .modeling_difflmm import VISION_ATTENTION, DiffLMMForConditionalGeneration
    from .processing import make_processor

    path = resolve(str(path), "model")  # hub ids fail within seconds when the hub is out of reach
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    cfg = _read_json(_fetch(path, "config.json", what="DiffLMM checkpoint"))
    if not is_difflmm_checkpoint(cfg):
        raise AttendsegError(
            f"{path} is not a DiffLMM checkpoint (config.json has neither model_type 'difflmm' nor "
            f"mm_projector_type '{PROJECTOR_TYPE}')"
        )

    if cfg.get("model_type") == DiffLMMConfig.model_type:  # our own save_pretrained folder
        from transformers import AutoProcessor

        kwargs = {"dtype": dtype}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = DiffLMMForConditionalGeneration.from_pretrained(path, **kwargs)
        for key, value in vision_overrides.items():
            setattr(model.config.vision_config, key, value)
        processor = AutoProcessor.from_pretrained(path)
        if chat_template is not None:
            processor.chat_template = chat_template
        return model.to(device).eval(), processor

    # ---- the released LoRA layout -------------------------------------------------------------
    adapter_path = _fetch(path, "adapter_config.json", what="DiffLMM checkpoint (LoRA adapter config)", required=False)
    if adapter_path is None:
        raise AttendsegError(
            f"{path} has no adapter_config.json: only the LoRA release layout (adapter + "
            "non_lora_trainables.bin on a base LLM) or a DiffLMM save_pretrained folder can be loaded"
        )
    adapter_config, lora = read_lora_adapter(path)
    trainables_path = _fetch(path, "non_lora_trainables.bin", what="DiffLMM checkpoint (projector weights)")
    try:
        trainables = torch.load(trainables_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise AttendsegError(f"cannot read {trainables_path}: {exc}") from None
    projector_state, llm_state, ignored = map_non_lora_trainables(trainables)
    if ignored:
        logger.warning("non_lora_trainables.bin: ignoring %d keys (e.g. %s)", len(ignored), ignored[0])
    if not projector_state:
        raise AttendsegError(f"non_lora_trainables.bin in {path} holds no mm_projector weights")

    # check the vision parts are there before loading anything heavy
    sd = str(sd or cfg.get("mm_vision_tower") or DEFAULT_SD)
    sd = HUB_ALIASES.get(sd, sd)
    clip = str(clip or cfg.get("mm_vision_sd_clip") or DEFAULT_CLIP)
    base = _resolve_base(None if base is None else str(base), adapter_config)
    # hub ids: each fails within seconds, naming the piece, when the hub is out of reach
    sd = resolve(sd, "Stable Diffusion (SD)", "unet/config.json")
    clip = resolve(clip, "CLIP")
    base = resolve(base, "base LLM")
    _check_sd(sd)
    _fetch(clip, "config.json", what=f"CLIP {clip!r}")

    # language model: base + LoRA (+ any LLM weights among the trainables)
    base_cfg = _read_json(_fetch(base, "config.json", what=f"base language model {base!r}"))
    if check_base:
        _check_base(cfg, adapter_config, base, base_cfg, grown_vocabulary="model.embed_tokens.weight" in llm_state)
    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        llm = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, device_map=str(device))
    except ImportError as exc:  # a sentencepiece-only tokenizer (Vicuna) needs sentencepiece
        raise AttendsegError(
            f"cannot load the tokenizer of {base!r}: {exc} (pip install sentencepiece protobuf)"
        ) from None
    except (OSError, ValueError) as exc:
        raise AttendsegError(f"cannot load the base language model {base!r}: {exc}") from None
    vocab = int(cfg.get("vocab_size") or 0)
    if vocab > llm.get_input_embeddings().weight.shape[0]:
        llm.resize_token_embeddings(vocab, mean_resizing=False)
    merge_lora(llm, adapter_config, lora)
    if llm_state:
        missing_ok = llm.load_state_dict({k: v.to(dtype) for k, v in llm_state.items()}, strict=False)
        if missing_ok.unexpected_keys:
            raise AttendsegError(f"non_lora_trainables.bin has LLM keys the base lacks: {missing_ok.unexpected_keys[:5]}")
    image_token_id = _ensure_image_token(tokenizer, llm)

    # vision parts
    unet, vae, scheduler_config = _load_sd(sd, dtype)
    try:
        clip_model = CLIPVisionModel.from_pretrained(clip, dtype=dtype, attn_implementation=VISION_ATTENTION)
    except (OSError, ValueError) as exc:
        raise AttendsegError(f"cannot load CLIP {clip!r}: {exc}") from None
    clip_config = clip_model.config.to_dict()

    vision_config = _vision_config_from_release(
        cfg, unet, vae, scheduler_config, clip_config, projector_state, vision_overrides
    )
    config = DiffLMMConfig(
        vision_config=vision_config,
        text_config=llm.config,
        image_token_index=image_token_id,
        image_seq_length=vision_config.num_image_tokens,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=bool(getattr(llm.config, "tie_word_embeddings", False)),
    )
    model = _assemble(config, llm, clip_model, vae, unet)
    _load_projector(model.model.multi_modal_projector, projector_state, path)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.config.name_or_path = path
    model = model.to(device=device, dtype=dtype).eval()
    if attn_implementation is not None:
        model.set_attn_implementation(attn_implementation)
    processor = make_processor(tokenizer, config.vision_config, chat_template=chat_template)
    return model, processor


def _assemble(config: DiffLMMConfig, llm, clip_model, vae, unet):
    """A DiffLMM around already-loaded parts (no copies: the modules are moved in)."""
    from accelerate import init_empty_weights
    from diffusers import DDPMScheduler

    from .modeling_difflmm import DiffLMMForConditionalGeneration, SDCLIPBlock

    with init_empty_weights(include_buffers=False):
        model = DiffLMMForConditionalGeneration(config)
    inner = model.model
    inner.language_model = llm.get_submodule(llm.base_model_prefix)
    model.lm_head = llm.get_output_embeddings()
    config.text_config = inner.language_model.config
    tower = inner.vision_tower
    tower.clip, tower.vae, tower.unet = clip_model.eval(), vae.eval(), unet.eval()
    tower.scheduler = DDPMScheduler.from_config(config.vision_config.scheduler_config)
    inner.multi_modal_projector = SDCLIPBlock(config).to(next(llm.parameters()).dtype)
    on_meta = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if on_meta:  # a bug, not a user error
        raise RuntimeError(f"DiffLMM assembly left parameters on the meta device: {on_meta[:5]}")
    return model
