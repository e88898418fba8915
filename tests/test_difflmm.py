"""DiffLMM: the diffusion encoder, the transformers model, the released-layout loader.

Every part is a tiny random model built from configs (SD-style UNet at toy widths, AutoencoderKL,
CLIP, Llama); references are diffusers' own full UNet pass (forward hooks), transformers' own
``save_pretrained`` / eager attention and peft's own LoRA merge.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from attendseg.encoders import (
    DiffLMMForConditionalGeneration,
    DiffLMMVisionConfig,
    is_difflmm_checkpoint,
    load_difflmm,
    make_processor,
    unet_up_block_features,
)
from attendseg.encoders.tiny import build_tiny_difflmm, write_released_layout
from attendseg.errors import AttendsegError
from eager_reference import generation_maps

WORDS = "describe the image a red green blue circle square on left right of".split()


def photo(h=20, w=30, seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(h, w, 3) * 255).astype("uint8"))


def chat(processor, prompt="describe the image"):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Toy-sized convolutions run far faster on one thread on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(one_thread):
    return build_tiny_difflmm(WORDS, seed=0)


@pytest.fixture(scope="module")
def inputs(tiny):
    _, processor = tiny
    return processor(images=photo(), text=chat(processor), return_tensors="pt")


@pytest.fixture(scope="module")
def released(tiny, tmp_path_factory):
    model, processor = tiny
    return write_released_layout(tmp_path_factory.mktemp("difflmm-release"), model, processor.tokenizer, seed=3)


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


# ------------------------------------------------------------------------------ geometry
def test_token_count_and_grid(tiny, inputs):
    model, processor = tiny
    config = model.config
    assert config.vision_config.feature_grid == 8 and config.image_seq_length == 64
    assert int((inputs["input_ids"] == config.image_token_id).sum()) == 64
    pixels = inputs["pixel_values"]
    assert pixels.shape == (1, 3, 32, 32) and pixels.min() >= -1 and pixels.max() <= 1
    # 20×30 photo padded to a square with grey (127 → -0.0039 in [-1, 1]) at the top and bottom
    assert torch.allclose(pixels[0, :, 0], torch.full_like(pixels[0, :, 0], 127 / 127.5 - 1), atol=1e-6)
    with torch.no_grad():
        out = model.model.get_image_features(pixels)
    assert out.last_hidden_state.shape == (1, 64, config.text_config.hidden_size)
    unet_features, clip_tokens = out.hidden_states
    assert unet_features[0].shape == (1, 32, 8, 8) and clip_tokens.shape == (1, 64, 32)


def test_paper_geometry_576_tokens(tiny):
    """The default config is the paper's: up-block 1 of SD-1.5 at 384 px → 1280 × 24 × 24."""
    config = DiffLMMVisionConfig()
    assert (config.feature_grid, config.num_image_tokens, config.feature_channels) == (24, 576, 1280)
    assert (config.clip_grid, config.timestep, config.ensemble_size, config.caption_dim) == (24, 100, 1, 768)
    processor = make_processor(tiny[1].tokenizer, config)
    batch = processor(images=photo(300, 451), text=chat(processor), return_tensors="pt")
    assert batch["pixel_values"].shape == (1, 3, 384, 384)
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 576


def test_vicuna_v1_chat_template(tiny):
    """LLaVA-1.5's conversation format: ``{system} USER: <image>\n... ASSISTANT: ...</s>USER: ...``."""
    from attendseg.encoders import VICUNA_V1_TEMPLATE

    processor = make_processor(tiny[1].tokenizer, DiffLMMVisionConfig(), chat_template=VICUNA_V1_TEMPLATE)
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe it."}]}]
    assert processor.apply_chat_template(turn, add_generation_prompt=True).endswith(
        "polite answers to the human's questions. USER: <image>\nDescribe it. ASSISTANT:")
    turns = [{"role": "system", "content": "Be brief."}, *turn,
             {"role": "assistant", "content": "A cat."}, {"role": "user", "content": "Where?"}]
    assert processor.apply_chat_template(turns, add_generation_prompt=True) == (
        "Be brief. USER: <image>\nDescribe it. ASSISTANT: A cat.</s>USER: Where? ASSISTANT:")


# ------------------------------------------------------------------------------ encoder
def tiny_unet(**extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(8, 16, 16, 32),
        layers_per_block=1,
        attention_head_dim=2,
        cross_attention_dim=12,
        norm_num_groups=4,
        **extra,
    ).eval()


@pytest.mark.parametrize("side", [16, 12])  # 12: not a multiple of 2**upsamplers (explicit upsample sizes)
def test_early_stop_equals_full_unet_with_hooks(side):
    unet = tiny_unet()
    sample = torch.randn(2, 4, side, side)
    cond = torch.randn(2, 5, 12)
    t = torch.tensor([100, 7])
    seen = {}
    hooks = [block.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out))
             for i, block in enumerate(unet.up_blocks)]
    with torch.no_grad():
        unet(sample, t, encoder_hidden_states=cond)
    for h in hooks:
        h.remove()
    for blocks in ([0], [1], [3], [2, 1]):
        with torch.no_grad():
            ours = unet_up_block_features(unet, sample, t, cond, blocks)
        for i, feature in zip(blocks, ours):
            assert torch.equal(feature, seen[i]), i
    # stopping early: nothing after the last requested block runs
    ran = []
    later = [unet.up_blocks[2].register_forward_hook(lambda *a: ran.append("up2")),
             unet.conv_out.register_forward_hook(lambda *a: ran.append("conv_out"))]
    with torch.no_grad():
        unet_up_block_features(unet, sample, 100, cond, 1)
    assert ran == []
    for h in later:
        h.remove()


def test_unsupported_unet_is_refused():
    unet = tiny_unet(num_class_embeds=3)
    with pytest.raises(AttendsegError, match="class embeddings"):
        unet_up_block_features(unet, torch.randn(1, 4, 16, 16), 10, torch.randn(1, 5, 12), 1)
    with pytest.raises(AttendsegError, match="up-block 7"):
        unet_up_block_features(tiny_unet(), torch.randn(1, 4, 16, 16), 10, torch.randn(1, 5, 12), 7)


def test_seeded_runs_bit_identical_and_settings_matter(tiny, inputs):
    model, _ = tiny
    tower, projector = model.model.vision_tower, model.model.multi_modal_projector
    pixels = inputs["pixel_values"]
    vision = model.config.vision_config
    with torch.no_grad():
        cond = projector.caption(tower.clip_features(pixels))

        def feats(**kw):
            return tower.diffusion_features(pixels, cond, **kw)[0]

        first = model.model.get_image_features(pixels).last_hidden_state
        again = model.model.get_image_features(pixels).last_hidden_state
        assert torch.equal(first, again)  # deterministic: seeded noise, latent mode
        assert torch.equal(feats(), feats())
        assert torch.equal(feats(generator=torch.Generator().manual_seed(5)),
                           feats(generator=torch.Generator().manual_seed(5)))
        assert not torch.equal(feats(generator=torch.Generator().manual_seed(5)), feats())
        assert not torch.equal(feats(deterministic=False), feats(deterministic=False))
        assert torch.equal(feats(deterministic=False, generator=torch.Generator().manual_seed(2)),
                           feats(deterministic=False, generator=torch.Generator().manual_seed(2)))
        assert torch.equal(feats(ensemble_size=3), feats(ensemble_size=3))
        assert not torch.equal(feats(ensemble_size=3), feats())
        assert not torch.equal(feats(timestep=500), feats())
        assert feats(up_blocks=2).shape == (1, 16, 16, 16)
        # config changes take effect at call time
        vision.timestep = 500
        try:
            assert torch.equal(feats(), feats(timestep=500))
        finally:
            vision.timestep = 100
        # an ensemble of E is the mean of E single draws from the seeded noise
        gen = torch.Generator().manual_seed(vision.seed)
        z = tower.latents(pixels, deterministic=True)
        noise = torch.randn((2, 1, *z.shape[1:]), generator=gen)[:, 0]
        t = torch.full((1,), 100)
        singles = [unet_up_block_features(tower.unet, tower.scheduler.add_noise(z, n[None], t), t, cond, 1)[0]
                   for n in noise]
        assert torch.allclose(feats(ensemble_size=2), (singles[0] + singles[1]) / 2, atol=1e-6)


def test_image_features_do_not_depend_on_the_batch(tiny):
    model, processor = tiny
    images = [photo(), photo(30, 18, seed=1)]
    prompts = [chat(processor)] * 2
    batch = processor(images=images, text=prompts, return_tensors="pt", padding=True)["pixel_values"]
    with torch.no_grad():
        both = model.model.get_image_features(batch).last_hidden_state
        alone = model.model.get_image_features(batch[1:]).last_hidden_state
    assert torch.allclose(both[1:], alone, atol=1e-5, rtol=0)


def test_vision_tower_keeps_sdpa(tiny, inputs):
    model, _ = tiny
    clip = model.model.vision_tower.clip
    try:
        model.set_attn_implementation({"text_config": "eager"})
        assert model.config.text_config._attn_implementation == "eager"
        assert clip.config._attn_implementation == "sdpa"
        model.set_attn_implementation("eager")
        with torch.no_grad():
            out = model(**inputs, output_attentions=True)
        assert clip.config._attn_implementation == "sdpa"
        assert len(out.attentions) == model.config.text_config.num_hidden_layers
    finally:
        model.set_attn_implementation("sdpa")


# ------------------------------------------------------------------------------ model I/O
def test_save_from_pretrained_round_trip(tiny, inputs, tmp_path):
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "difflmm"
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(loaded) is DiffLMMForConditionalGeneration
    fields = loaded.config.vision_config.to_dict()
    fields.pop("dtype"), fields.pop("transformers_version", None)
    assert all(model.config.vision_config.to_dict()[k] == v for k, v in fields.items())
    reference = model.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in loaded.state_dict().items())
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    again = loaded_processor(images=photo(), text=chat(loaded_processor), return_tensors="pt")
    assert torch.equal(again["input_ids"], inputs["input_ids"])
    assert torch.equal(again["pixel_values"], inputs["pixel_values"])
    assert torch.allclose(logits(loaded, inputs), logits(model, inputs), atol=1e-5, rtol=0)
    with torch.no_grad():
        a = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        b = loaded.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)
    assert is_difflmm_checkpoint(tmp_path)
    via_loader, _ = load_difflmm(tmp_path, device="cpu", timestep=250)
    assert via_loader.config.vision_config.timestep == 250


def merged_reference(model, adapter_folder):
    """The tiny model with the adapter's LoRA merged by hand: W + (α / r) · B · A."""
    from safetensors.torch import load_file

    config = json.loads((adapter_folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    lora = load_file(str(adapter_folder / "adapter_model.safetensors"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n = 0
    for key, a in lora.items():
        if key.endswith("lora_A.weight"):
            name = key[len("base_model.model.model."):-len(".lora_A.weight")]
            b = lora[key.replace("lora_A", "lora_B")]
            state[f"model.language_model.{name}.weight"] += scale * b @ a
            n += 1
    assert n == 7 * model.config.text_config.num_hidden_layers
    reference = DiffLMMForConditionalGeneration(model.config).eval()
    reference.load_state_dict(state)
    reference.generation_config = model.generation_config
    return reference


def test_released_layout_loads_like_the_merged_model(tiny, inputs, released):
    model, processor = tiny
    loaded, loaded_processor = load_difflmm(released["difflmm"], device="cpu")
    assert is_difflmm_checkpoint(released["difflmm"])
    assert loaded.config.image_token_id == model.config.image_token_id
    vision = loaded.config.vision_config
    assert (vision.up_blocks, vision.timestep, vision.ensemble_size, vision.image_size) == ([1], 100, 1, 32)
    batch = loaded_processor(images=photo(), text=chat(loaded_processor), return_tensors="pt")
    assert torch.equal(batch["input_ids"], inputs["input_ids"])
    reference = merged_reference(model, released["difflmm"])
    expected = logits(reference, inputs)
    assert not torch.allclose(expected, logits(model, inputs), atol=1e-3)  # the LoRA matters
    assert torch.allclose(logits(loaded, batch), expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        a = reference.generate(**inputs, max_new_tokens=6, do_sample=False)
        b = loaded.generate(**batch, max_new_tokens=6, do_sample=False)
    assert torch.equal(a, b)


def test_lora_merge_equals_peft(released):
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from attendseg.encoders.checkpoint import merge_lora, read_lora_adapter

    ours = AutoModelForCausalLM.from_pretrained(released["base"])
    merge_lora(ours, *read_lora_adapter(released["difflmm"]))
    base = AutoModelForCausalLM.from_pretrained(released["base"])
    theirs = peft.PeftModel.from_pretrained(base, str(released["difflmm"])).merge_and_unload()
    expected = theirs.state_dict()
    for key, value in ours.state_dict().items():
        assert torch.allclose(value, expected[key], atol=1e-6, rtol=0), key


# ------------------------------------------------------------------------------ capture
def test_capture_equals_eager_reference(tiny, tmp_path):
    from attendseg.attender import Attender
    from attendseg.encoders import DiffLMMAdapter
    from attendseg import capture

    model, processor = tiny
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    adapter = DiffLMMAdapter.load(str(tmp_path), dtype=torch.float32, device=torch.device("cpu"))
    capture.enable(adapter.language_model)
    attender = Attender(adapter, model_id=str(tmp_path))
    images, prompts = [photo(), photo(30, 18, seed=1)], ["describe the image", "a red circle on the left"]
    traces = attender.attend(images, prompts, max_new_tokens=4, per_layer=True, per_head=True)
    eager = DiffLMMForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").eval()
    prepared = adapter.prepare(images, prompts)
    sequences, reference = generation_maps(eager, prepared, max_new_tokens=4,
                                           pad_token_id=processor.tokenizer.pad_token_id)
    for b, trace in enumerate(traces):
        assert trace.maps.shape[-1] == 64
        assert torch.allclose(trace.maps, reference[b][: len(trace)], atol=1e-5, rtol=0)
        assert torch.equal(trace.token_ids, sequences[b, prepared.inputs["input_ids"].shape[1]:][: len(trace)])


# ------------------------------------------------------------------------------ bad input
def copy_release(released, tmp_path):
    folder = tmp_path / "difflmm"
    shutil.copytree(released["difflmm"], folder)
    return folder


def test_missing_non_lora_trainables(released, tmp_path):
    folder = copy_release(released, tmp_path)
    (folder / "non_lora_trainables.bin").unlink()
    with pytest.raises(AttendsegError, match="non_lora_trainables.bin"):
        load_difflmm(folder, device="cpu")


def test_sd_folder_without_unet(released, tmp_path):
    sd = tmp_path / "sd"
    shutil.copytree(released["sd"], sd)
    shutil.rmtree(sd / "unet")
    with pytest.raises(AttendsegError, match="no UNet"):
        load_difflmm(released["difflmm"], sd=sd, device="cpu")


def test_adapter_saved_as_bin(tiny, inputs, released, tmp_path):
    """Older PEFT saved ``adapter_model.bin``: the same weights load the same model."""
    from safetensors.torch import load_file

    folder = copy_release(released, tmp_path)
    weights = folder / "adapter_model.safetensors"
    torch.save(load_file(str(weights)), folder / "adapter_model.bin")
    weights.unlink()
    from_bin, _ = load_difflmm(folder, device="cpu")
    from_safetensors, _ = load_difflmm(released["difflmm"], device="cpu")
    assert torch.allclose(logits(from_bin, inputs), logits(from_safetensors, inputs), atol=1e-6, rtol=0)


def test_lora_adapter_that_does_not_fit_the_base(released, tmp_path):
    from safetensors.torch import load_file, save_file

    # another base name than the one the adapter records
    folder = copy_release(released, tmp_path)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "meta-llama/Llama-2-13b-hf"
    config_path.write_text(json.dumps(config))
    with pytest.raises(AttendsegError, match="Llama-2-13b-hf"):
        load_difflmm(folder, base=released["base"], device="cpu")
    # target modules the base lacks
    config["base_model_name_or_path"] = str(released["base"])
    config["target_modules"] = ["query_key_value", "dense"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(AttendsegError, match="query_key_value"):
        load_difflmm(folder, device="cpu")
    # LoRA factors of another width
    config["target_modules"] = ["q_proj"]
    config_path.write_text(json.dumps(config))
    weights = load_file(str(folder / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    weights[key] = torch.zeros(weights[key].shape[0], 128)
    save_file(weights, str(folder / "adapter_model.safetensors"))
    with pytest.raises(AttendsegError, match="do not fit the base model"):
        load_difflmm(folder, device="cpu")


def test_not_a_difflmm_checkpoint(tiny_llava, tmp_path):
    assert not is_difflmm_checkpoint(tiny_llava)
    assert not is_difflmm_checkpoint(tmp_path / "nowhere")
    with pytest.raises(AttendsegError, match="not a DiffLMM checkpoint"):
        load_difflmm(tiny_llava, device="cpu")
    with pytest.raises(AttendsegError, match="does not exist"):
        load_difflmm(tmp_path / "nowhere", device="cpu")


# ------------------------------------------------------------------------------ loader pieces
def test_non_lora_trainable_key_mapping():
    from attendseg.encoders import map_non_lora_trainables

    w = torch.zeros(1)
    projector, llm, ignored = map_non_lora_trainables({
        "base_model.model.model.mm_projector.linear.0.weight": w,
        "model.mm_projector.vt_pe": w,
        "mm_projector.clip_pe": w,
        "base_model.model.model.embed_tokens.weight": w,
        "base_model.model.lm_head.weight": w,
        "base_model.model.model.vision_tower.unet.conv_in.weight": w,
        "something.else": w,
    })
    assert sorted(projector) == ["clip_pe", "linear.0.weight", "vt_pe"]
    assert sorted(llm) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert len(ignored) == 2


def test_image_token_added_to_a_vicuna_like_tokenizer():
    """Vicuna's vocabulary has no ``<image>``: it is added and the embeddings grow to a multiple of 64."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from attendseg.encoders.checkpoint import _ensure_image_token

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                        eos_token="</s>")
    torch.manual_seed(0)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                       num_hidden_layers=1, num_attention_heads=2))
    old = llm.get_output_embeddings().weight.detach().clone()
    image_id = _ensure_image_token(tokenizer, llm)
    assert image_id == len(vocab) and tokenizer.pad_token == "<unk>"
    ids = tokenizer("describe <image> the", add_special_tokens=False)["input_ids"]
    assert ids == [vocab["describe"], image_id, vocab["the"]]
    head = llm.get_output_embeddings().weight
    assert head.shape[0] == 64 and llm.get_input_embeddings().weight.shape[0] == 64
    assert torch.equal(head[: len(vocab)], old)
    assert torch.allclose(head[image_id], old.mean(0), atol=1e-6)


def test_attendseg_load_routes_the_released_layout(released, tiny_llava, tmp_path):
    """What a user runs: attendseg.load and the CLI on the released folder + its base LLM."""
    import subprocess
    import sys

    import attendseg

    attender = attendseg.load(released["difflmm"], base=str(released["base"]))
    assert attender.adapter.family == "difflmm"
    trace = attender.attend_text(photo(), "describe the image", "a red circle")
    assert trace.views[0].grid == (8, 8) and trace.maps.shape[-1] == 64
    with pytest.raises(attendseg.AttendsegError, match="not used by llava"):
        attendseg.load(tiny_llava, base="x")
    photo().save(tmp_path / "p.png")
    run = subprocess.run([sys.executable, "-m", "attendseg.cli.main", "ground", str(tmp_path / "p.png"),
                          "--model", str(released["difflmm"]), "--base", str(released["base"]), "--text",
                          "a red circle", "--out", str(tmp_path / "out"), "-q", "--phrases", "simple"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out" / "p.png.json").exists()
