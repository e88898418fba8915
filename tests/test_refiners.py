"""attendseg.refiners: the protocol, SAM plumbing with a tiny random SamModel, weight-free refiners."""

import json

import numpy as np
import pytest
import torch

from attendseg.errors import AttendsegError
from attendseg.maps import to_image
from attendseg.refiners import (
    MaskResult,
    Prompt,
    Refiner,
    available_refiners,
    instance_prompts,
    make_refiner,
    map_prompt,
    register_refiner,
)
from attendseg.views import View, square_box


# ------------------------------------------------------------------------------ fixtures
def shaded_scene(H=200, W=300, seed=0):
    """A shaded red ellipse on a textured grey background; returns (image, object mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    bg = 120 + 40 * np.sin(xx / 3.0) * np.sin(yy / 5.0) + rng.normal(0, 15, (H, W))
    img = np.repeat(bg[..., None], 3, -1)
    img[..., 2] += 20
    cx, cy, ax, ay = 0.6 * W, 0.55 * H, 0.18 * W, 0.25 * H
    inside = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2 <= 1
    shade = 0.55 + 0.45 * np.clip(1 - ((xx - cx + ax / 2) / ax / 1.5) ** 2 - ((yy - cy + ay / 2) / ay / 1.5) ** 2, 0, 1)
    obj = np.stack([220 * shade, 40 * shade, 30 * shade], -1)
    img[inside] = obj[inside]
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8), inside


def coverage_heatmap(obj, mode="pad", n=24, seed=0):
    """What a well-grounded LMM map looks like: each cell of an n×n grid holds the fraction of the
    object it covers (+ noise), taken to the image frame through the view like a real trace."""
    H, W = obj.shape
    view = View(0, (n, n), square_box(W, H, mode))
    g = np.zeros((n, n))
    for r in range(n):
        for c in range(n):
            x0, y0, x1, y1 = view.cell_box(r, c)
            ia, ib = int(max(0, np.floor(y0))), int(min(H, np.ceil(y1)))
            ja, jb = int(max(0, np.floor(x0))), int(min(W, np.ceil(x1)))
            g[r, c] = obj[ia:ib, ja:jb].mean() if ib > ia and jb > ja else 0.0
    g += np.random.default_rng(seed).normal(0, 0.05, g.shape)
    return to_image(torch.tensor(g.reshape(-1)), [view], (W, H))


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


# ------------------------------------------------------------------------------ registry
def test_registry_and_protocol(tmp_path):
    assert {"sam", "superpixel", "threshold"} <= set(available_refiners())
    with pytest.raises(AttendsegError, match="unknown refiner"):
        make_refiner("nope")
    for name in ("superpixel", "threshold"):
        r = make_refiner(name)
        assert isinstance(r, Refiner) and r.name == name

    @register_refiner("everything")
    class Everything:
        name = "everything"

        def set_image(self, image):
            self.shape = image.shape[:2]

        def refine(self, prompts):
            return [MaskResult(np.ones(self.shape, bool), 1.0) for _ in prompts]

    r = make_refiner("everything")
    r.set_image(np.zeros((4, 5, 3), np.uint8))
    assert r.refine([map_prompt(np.eye(4, 5))])[0].mask.shape == (4, 5)


def test_prompt_helpers():
    hm = np.zeros((40, 60), np.float32)
    hm[10:20, 5:15] = 1.0
    hm[12, 8] = 2.0
    hm[25:35, 40:55] = 0.9
    p = map_prompt(hm)
    assert p.points.tolist() == [[8.5, 12.5]] and p.labels.tolist() == [1] and p.box is None
    assert p.heatmap.shape == (40, 60)
    pb = map_prompt(hm, box=True, threshold=0.3)
    assert pb.box.tolist() == [5, 10, 15, 20]
    many = instance_prompts(hm, 2, min_distance=5, box=True, threshold=0.3)
    assert len(many) == 2 and many[1].box.tolist() == [40, 25, 55, 35]
    assert map_prompt(hm, k=2, min_distance=5).points.shape == (2, 2)
    with pytest.raises(ValueError):
        Prompt(points=np.zeros((2, 2)), labels=np.ones(3))


# ------------------------------------------------------------------------------ SAM
def test_sam_masks_for_a_batch_of_prompts(tiny_sam, photos):
    image = photos["coffee"]  # 400 x 600
    H, W = image.shape[:2]
    sam = make_refiner("sam", model=str(tiny_sam), device="cpu")
    sam.set_image(image)
    assert sam.image_embeddings.shape == (1, 16, 4, 4)
    prompts = [
        Prompt(points=[[300.5, 150.5]], labels=[1]),
        Prompt(points=[[50.5, 350.5]], labels=[1]),
        Prompt(points=[[590.5, 10.5]], labels=[1]),
    ]
    results = sam.refine(prompts)
    assert len(results) == 3
    for r in results:
        assert r.mask.shape == (H, W) and r.mask.dtype == bool
        assert isinstance(r.score, float) and r.index == 2  # "last"


def test_sam_choices(tiny_sam, photos):
    image = photos["chelsea"]
    prompts = [Prompt(points=[[100.5 + 60 * i, 80.5 + 40 * i]], labels=[1]) for i in range(4)]
    sam = make_refiner("sam", model=str(tiny_sam))
    sam.set_image(image)
    out = {}
    for choice in ("last", "best-iou", "whole", "part", "subpart", "single"):
        sam.choice = choice
        out[choice] = sam.refine(prompts)
    sam.choice = "last"
    logits, iou_pred = sam.decode_logits(prompts)
    for i in range(len(prompts)):
        assert out["last"][i].index == 2
        assert out["best-iou"][i].index == int(iou_pred[i].argmax())
        assert out["best-iou"][i].score == pytest.approx(float(iou_pred[i].max()), abs=1e-6)
        areas = [out[c][i].mask.sum() for c in ("whole", "part", "subpart")]
        assert areas[0] >= areas[1] >= areas[2]
        assert out["single"][i].index == 0
    with pytest.raises(AttendsegError, match="mask choice"):
        make_refiner("sam", model=str(tiny_sam), choice="biggest")


def test_sam_dtype(tiny_sam, photos):
    sam = make_refiner("sam", model=str(tiny_sam), dtype="bfloat16", device="cpu")
    assert sam.dtype == torch.bfloat16
    sam.set_image(photos["chelsea"])
    (res,) = sam.refine([Prompt(points=[[100.5, 50.5]], labels=[1])])
    assert res.mask.shape == (300, 451) and np.isfinite(res.score)
    with pytest.raises(AttendsegError, match="dtype"):
        make_refiner("sam", model=str(tiny_sam), dtype="int8")


def test_sam_batched_equals_one_by_one(tiny_sam, photos):
    image = photos["rocket"]
    sam = make_refiner("sam", model=str(tiny_sam))
    sam.set_image(image)
    rng = np.random.default_rng(0)
    prompts = [
        Prompt(points=rng.uniform([0, 0], [640, 427], (2, 2)), labels=[1, 0]) for _ in range(5)
    ]
    batch_logits, batch_iou = sam.decode_logits(prompts)
    batch = sam.refine(prompts)
    for i, p in enumerate(prompts):
        one_logits, one_iou = sam.decode_logits([p])
        torch.testing.assert_close(batch_logits[i], one_logits[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batch_iou[i], one_iou[0], atol=1e-5, rtol=1e-5)
        (one,) = sam.refine([p])
        assert (one.mask != batch[i].mask).mean() < 1e-4
        assert one.score == pytest.approx(batch[i].score, abs=1e-5)


def test_sam_mixed_prompts_and_geometry(tiny_sam, photos):
    image = photos["coffee"]  # 600 wide → resized by 64 / 600
    sam = make_refiner("sam", model=str(tiny_sam))
    sam.set_image(image)
    seen = []
    hook = sam.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    try:
        prompts = [
            Prompt(points=[[300.5, 150.5]], labels=[1]),
            Prompt(points=np.zeros((0, 2)), labels=[], box=[100, 50, 400, 300]),
            Prompt(points=np.zeros((0, 2)), labels=[]),  # nothing: an empty mask
            Prompt(points=[[10.5, 20.5], [30.5, 40.5]], labels=[1, 1], box=[0, 0, 200, 200]),
            Prompt(points=[[500.5, 350.5]], labels=[1]),
        ]
        results = sam.refine(prompts)
    finally:
        hook.remove()
    assert [r.mask.shape for r in results] == [(400, 600)] * 5
    assert not results[2].mask.any() and results[2].score == 0.0
    assert len(seen) == 3  # one decoder call per prompt shape
    first = seen[0]
    assert first["input_points"].shape == (1, 2, 1, 2)  # both single-point prompts, one batch
    s = sam._scale()
    expected = torch.tensor([[300.5 * s[0] - 0.5, 150.5 * s[1] - 0.5], [500.5 * s[0] - 0.5, 350.5 * s[1] - 0.5]])
    torch.testing.assert_close(first["input_points"][0, :, 0].float(), expected)
    assert seen[1]["input_boxes"].shape == (1, 1, 4) and seen[1].get("input_points") is None
    assert seen[2]["input_points"].shape == (1, 1, 2, 2) and seen[2]["input_boxes"].shape == (1, 1, 4)


def test_sam_refiner_with_loaded_model_and_max_batch(tiny_sam, photos):
    from transformers import SamModel, SamProcessor

    model, processor = SamModel.from_pretrained(tiny_sam), SamProcessor.from_pretrained(tiny_sam)
    sam = make_refiner("sam", model=model, processor=processor, max_batch=2)
    sam.set_image(photos["chelsea"])
    ref = make_refiner("sam", model=str(tiny_sam))
    ref.set_image(photos["chelsea"])
    prompts = [Prompt(points=[[20.5 + 40 * i, 30.5 + 20 * i]], labels=[1]) for i in range(5)]
    for a, b in zip(sam.refine(prompts), ref.refine(prompts)):
        assert (a.mask != b.mask).mean() < 1e-4
    with pytest.raises(AttendsegError, match="SamProcessor"):
        make_refiner("sam", model=model)


def test_sam_bad_checkpoints(tmp_path):
    with pytest.raises(AttendsegError, match="cannot load SAM"):
        make_refiner("sam", model=str(tmp_path / "missing"))
    with pytest.raises(AttendsegError, match="cannot load SAM"):
        make_refiner("sam", model=str(tmp_path))  # empty folder
    other = tmp_path / "clip"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "clip_vision_model", "hidden_size": 8, "num_attention_heads": 2}))
    with pytest.raises(AttendsegError, match="not a SAM"):
        make_refiner("sam", model=str(other))


def test_refine_before_set_image(tiny_sam):
    for r in (make_refiner("sam", model=str(tiny_sam)), make_refiner("superpixel"), make_refiner("threshold")):
        with pytest.raises(AttendsegError, match="set_image"):
            r.refine([Prompt(points=[[1, 1]], labels=[1], heatmap=np.zeros((4, 4)))])


# ------------------------------------------------------------------------------ weight-free
@pytest.mark.parametrize("mode", ["pad", "crop"])
@pytest.mark.parametrize(
    "name,options",
    [("superpixel", {}), ("superpixel", {"method": "felzenszwalb"}), ("threshold", {}), ("threshold", {"threshold": 0.4})],
)
def test_weight_free_on_a_shaded_shape(name, options, mode):
    image, obj = shaded_scene(seed=1 if mode == "crop" else 0)
    heat = coverage_heatmap(obj, mode=mode)
    r = make_refiner(name, **options)
    r.set_image(image)
    (res,) = r.refine([map_prompt(heat)])
    assert res.mask.shape == obj.shape and res.mask.dtype == bool
    assert iou(res.mask, obj) >= 0.7
    if name == "superpixel":
        assert iou(res.mask, obj) >= 0.9  # superpixels snap to the object's edges
    assert 0.0 < res.score <= 1.0


def test_superpixel_follows_edges_better_than_a_blurry_map():
    image, obj = shaded_scene(seed=2)
    heat = coverage_heatmap(obj, n=12)  # coarse grid: the map alone is blobby
    sp, th = make_refiner("superpixel"), make_refiner("threshold")
    sp.set_image(image)
    th.set_image(image)
    p = map_prompt(heat)
    assert iou(sp.refine([p])[0].mask, obj) > iou(th.refine([p])[0].mask, obj)


def test_weight_free_on_a_photo(photos):
    """coffee.png: the heatmap covers the espresso's surface (an ellipse drawn by hand)."""
    image = photos["coffee"]
    H, W = image.shape[:2]
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    crema = ((xx - 287) / 82) ** 2 + ((yy - 143) / 48) ** 2 <= 1
    heat = coverage_heatmap(crema, mode="crop")
    for name in ("superpixel", "threshold"):
        r = make_refiner(name)
        r.set_image(image)
        p = map_prompt(heat)
        (res,) = r.refine([p])
        assert res.mask[int(p.points[0, 1]), int(p.points[0, 0])]
        assert iou(res.mask, crema) >= 0.7, name


def test_weight_free_prompt_options():
    image, obj = shaded_scene()
    heat = coverage_heatmap(obj)
    sp = make_refiner("superpixel")
    sp.set_image(image)
    p = map_prompt(heat)
    full = sp.refine([p])[0].mask
    # a box clips; a negative point on the object cuts its superpixel out
    boxed = Prompt(p.points, p.labels, box=[0, 0, 180, 200], heatmap=heat)
    assert not sp.refine([boxed])[0].mask[:, 180:].any()
    ys, xs = np.nonzero(obj)
    far = np.argmax((xs - p.points[0, 0]) ** 2 + (ys - p.points[0, 1]) ** 2)
    neg = Prompt(np.vstack([p.points, [[xs[far] + 0.5, ys[far] + 0.5]]]), [1, 0], heatmap=heat)
    cut = sp.refine([neg])[0].mask
    assert cut.sum() < full.sum() and not cut[ys[far], xs[far]]
    # no heatmap: superpixel grows on colour; threshold refuses
    assert sp.refine([Prompt(p.points, p.labels)])[0].mask[int(p.points[0, 1]), int(p.points[0, 0])]
    th = make_refiner("threshold")
    th.set_image(image)
    with pytest.raises(AttendsegError, match="heatmap"):
        th.refine([Prompt(p.points, p.labels)])
    with pytest.raises(AttendsegError, match="shape"):
        th.refine([Prompt(p.points, p.labels, heatmap=np.zeros((5, 5)))])
    # several prompts → several masks, in order
    assert len(th.refine([p, p, p])) == 3


def test_weight_free_odd_images():
    """Grayscale, RGBA and float images are accepted; a tiny image works."""
    rng = np.random.default_rng(0)
    for image in (rng.integers(0, 255, (30, 40), dtype=np.uint8), rng.random((30, 40, 4)), np.zeros((3, 2, 3), np.uint8)):
        H, W = image.shape[:2]
        for name in ("superpixel", "threshold"):
            r = make_refiner(name)
            r.set_image(image)
            heat = rng.random((H, W)).astype(np.float32)
            (res,) = r.refine([map_prompt(heat)])
            assert res.mask.shape == (H, W)
