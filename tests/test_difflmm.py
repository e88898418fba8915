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

    folder = copy_release(released, tmp_path)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    # target modules the base lacks
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


def test_base_is_checked_by_its_config_not_its_name(tiny, inputs, released, tmp_path, caplog):
    """A renamed copy of the right base loads the same model; a base of another architecture,
    size or vocabulary is refused with what differs."""
    renamed = tmp_path / "my-llm-copy"
    shutil.copytree(released["base"], renamed)
    folder = copy_release(released, tmp_path)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = "lmsys/vicuna-7b-v1.5"  # as the real release records it
    config_path.write_text(json.dumps(config))
    with caplog.at_level("WARNING"):
        model, _ = load_difflmm(folder, base=renamed, device="cpu")
    assert "whose config matches" in caplog.text
    reference, _ = load_difflmm(released["difflmm"], device="cpu")
    assert torch.equal(logits(model, inputs), logits(reference, inputs))

    other = tmp_path / "other-llm"
    shutil.copytree(released["base"], other)
    base_config = json.loads((other / "config.json").read_text())
    base_config.update(model_type="mistral", num_hidden_layers=3, vocab_size=base_config["vocab_size"] + 7)
    (other / "config.json").write_text(json.dumps(base_config))
    with pytest.raises(AttendsegError) as error:
        load_difflmm(folder, base=other, device="cpu")
    message = str(error.value)
    assert "is not the LLM this release was trained on" in message and "\n" not in message
    for part in ("architecture 'mistral' (the release's: 'llama')", "num_hidden_layers 3 (the release's: 2)",
                 f"vocab_size {base_config['vocab_size']} (the release's: {base_config['vocab_size'] - 7})"):
        assert part in message


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


def test_attendseg_load_routes_the_released_layout(tiny, released, tiny_llava, tmp_path):
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
    # the original's fresh noise on every call, on request (what --fresh-noise passes)
    fresh = attendseg.load(released["difflmm"], base=str(released["base"]), deterministic=False).adapter.model
    pixels = tiny[1](images=photo(), text=chat(tiny[1]), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        first, second = (fresh.model.get_image_features(pixels).last_hidden_state for _ in range(2))
    assert fresh.config.vision_config.deterministic is False and not torch.equal(first, second)
    # the CLI with all four parts as local folders under other names, the release recording
    # paths that do not exist here (as the real one records the authors' machine)
    copies = {name: tmp_path / f"my-{name}" for name in ("base", "sd", "clip")}
    for name, copy in copies.items():
        shutil.copytree(released[name], copy)
    release = copy_release(released, tmp_path)
    for name, key, value in (("config.json", "mm_vision_tower", "/nowhere/sd"), ("config.json", "mm_vision_sd_clip", "/nowhere/clip"),
                             ("adapter_config.json", "base_model_name_or_path", "/nowhere/vicuna-7b-v1.5")):
        config = json.loads((release / name).read_text())
        config[key] = value
        (release / name).write_text(json.dumps(config))
    photo().save(tmp_path / "p.png")
    run = subprocess.run([sys.executable, "-m", "attendseg.cli.main", "ground", str(tmp_path / "p.png"),
                          "--model", str(release), "--base", str(copies["base"]), "--sd", str(copies["sd"]),
                          "--clip", str(copies["clip"]), "--fresh-noise", "--text", "a red circle", "--out",
                          str(tmp_path / "out"), "-q", "--phrases", "simple"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "out" / "p.png.json").read_text())["phrases"]


# ------------------------------------------------------------------------------ prompt ids
SPECIALS = ("<s>", "</s>", "<unk>")
SP_TEXT = [
    "A chat between a curious human and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "USER: Describe the image in detail. ASSISTANT: A red circle on the left of a green square.",
    "There is a cat and a dog. The person on the right holds 12 apples and 3 pears.",
] * 3


@pytest.fixture(scope="module")
def sentencepiece_model():
    """A Llama-style SentencePiece BPE model trained here (byte fallback, dummy prefix, digits
    split, no whitespace folding), as bytes."""
    import io

    spm = pytest.importorskip("sentencepiece")
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SP_TEXT), model_writer=out, model_type="bpe", vocab_size=400,
        byte_fallback=True, split_digits=True, add_dummy_prefix=True, remove_extra_whitespaces=False,
        normalization_rule_name="identity", unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0, minloglevel=2)
    return out.getvalue()


def slow_llama_ids(model: bytes, text: str, legacy: bool) -> list[int]:
    """The slow SentencePiece Llama tokenizer of LLaVA's time on ``text``: BOS, then the pieces.

    Written from that tokenizer's documented behaviour: special tokens split the text; with
    ``legacy`` each piece of text is SentencePiece-encoded as is (the model adds its dummy
    prefix); without ``legacy`` the dummy prefix is switched off in the model, "▁" is put once
    before the whole (non-empty) text, a text piece that starts with "▁" or a space is encoded
    behind an "<unk>" whose pieces are then dropped (so the leading "▁" stays a piece of its
    own), and a leading lone "▁" before a special token is dropped.
    """
    import re

    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    def split(s):
        return [p for p in re.split("(" + "|".join(map(re.escape, SPECIALS)) + ")", s) if p]

    if legacy:
        sp = spm.SentencePieceProcessor(model_proto=model)
        pieces = [q for p in split(text) for q in ([p] if p in SPECIALS else sp.encode(p, out_type=str))]
    else:
        proto = sentencepiece_model_pb2.ModelProto.FromString(model)
        proto.normalizer_spec.add_dummy_prefix = False
        sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        n_unk = len(sp.encode("<unk>"))
        pieces = []
        for part in split("▁" + text.replace("▁", " ") if text else ""):
            if part in SPECIALS:
                pieces.append(part)
            elif part.startswith(("▁", " ")):
                pieces += sp.encode("<unk>" + part, out_type=str)[n_unk:]
            else:
                pieces += sp.encode(part, out_type=str)
        if len(pieces) > 1 and pieces[0] == "▁" and pieces[1] in SPECIALS:
            pieces = pieces[1:]
    return [sp.bos_id()] + [sp.piece_to_id(p) for p in pieces]


def original_llava_ids(model: bytes, text: str, legacy: bool, image_ids: list[int]) -> list[int]:
    """LLaVA's rule on the slow tokenizer: chunks around <image> tokenized separately; the first
    chunk keeps its BOS, the others lose it; the image ids go between the chunks."""
    chunks = [slow_llama_ids(model, chunk, legacy) for chunk in text.split("<image>")]
    ids = chunks[0][:1]
    for i, chunk in enumerate(chunks):
        ids += (image_ids if i else []) + chunk[1:]
    return ids


@pytest.mark.parametrize("kind", ["slow", "fast"])
@pytest.mark.parametrize("legacy", [True, False, None])
def test_prompt_ids_follow_the_original_llava_rule(sentencepiece_model, tmp_path, legacy, kind):
    """A Vicuna-style tokenizer (tokenizer.model, or tokenizer.json) with ``legacy`` true, false or
    absent: DiffLMM's processor feeds the ids the original code fed (a lone "▁" after <image>)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from attendseg.encoders import VICUNA_V1_TEMPLATE, DiffLMMProcessor, llava_prompt_ids
    from attendseg.encoders.checkpoint import _ensure_image_token
    from attendseg.encoders.tiny import tiny_vision_config

    folder = tmp_path / "slow"
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(sentencepiece_model)
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
              "add_bos_token": True, "add_eos_token": False}
    if legacy is not None:
        config["legacy"] = legacy
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if kind == "fast":
        fast = tmp_path / "fast"
        tokenizer.save_pretrained(fast)
        (fast / "tokenizer.model").unlink(missing_ok=True)
        assert (fast / "tokenizer.json").exists()
        tokenizer = AutoTokenizer.from_pretrained(fast)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16,
                                       num_hidden_layers=1, num_attention_heads=2))
    image_id = _ensure_image_token(tokenizer, llm)
    vision = tiny_vision_config()
    processor = make_processor(tokenizer, vision, chat_template=VICUNA_V1_TEMPLATE)
    assert isinstance(processor, DiffLMMProcessor)
    n = vision.num_image_tokens
    legacy_rule = True if legacy is None else legacy  # the slow tokenizer's default was legacy
    prompts = ["Describe the image in detail.", "what  is   there? 12 apples,\n\n3 pears ü", " a cat", "\n"]
    texts = [chat(processor, p) for p in prompts]
    batch = processor(images=[photo()] * len(texts), text=texts, return_tensors="pt", padding=True)
    vicuna_newline = [tokenizer.convert_tokens_to_ids("▁"), tokenizer.convert_tokens_to_ids("<0x0A>")]
    for row, mask, text in zip(batch["input_ids"], batch["attention_mask"], texts):
        expected = original_llava_ids(sentencepiece_model, text, legacy_rule, [image_id] * n)
        assert row[mask.bool()].tolist() == expected
        after = expected.index(image_id) + n
        assert expected[after:after + 2] == vicuna_newline  # the piece whole-string tokenization drops
    # two images, and an image at the very start
    text = "<image>\nleft: <image>\nright"
    assert llava_prompt_ids(tokenizer, text, image_ids=[image_id]) == original_llava_ids(
        sentencepiece_model, text, legacy_rule, [image_id])
