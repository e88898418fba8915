"""The shapes world: reproducible scenes, exact masks, caption spans, disjoint seed ranges."""

import numpy as np
import pytest

from attendseg import shapes

SEEDS = list(range(40))


@pytest.fixture(scope="module")
def scenes():
    return [shapes.make_scene(s) for s in SEEDS]


def test_reproducible_by_seed():
    a, b = shapes.make_scene(123), shapes.make_scene(123)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert a.caption == b.caption and a.prompt == b.prompt
    c = shapes.make_scene(124)
    assert not np.array_equal(a.image, c.image)


def test_types_and_shapes(scenes):
    for sc in scenes:
        H = W = shapes.DEFAULT_SIZE
        assert sc.image.dtype == np.uint8 and sc.image.shape == (H, W, 3)
        assert sc.masks.dtype == bool and sc.masks.shape == (len(sc.objects), H, W)
        assert 1 <= len(sc.objects) <= 4
        assert sc.prompt == shapes.ORDERS[sc.order][0]
    assert shapes.make_scene(5, size=96).image.shape == (96, 96, 3)


def test_variety(scenes):
    assert {len(sc.objects) for sc in scenes} == {1, 2, 3, 4}
    assert {sc.order for sc in scenes} == set(shapes.ORDERS)
    assert len({sc.meta["background"] for sc in scenes}) >= 4
    objs = [o for sc in scenes for o in sc.objects]
    assert len({o.shape for o in objs}) >= 5 and len({o.colour for o in objs}) >= 6
    radii = [o.radius for o in objs]
    assert max(radii) / min(radii) > 1.5


def test_masks_are_the_painted_pixels(scenes):
    for sc in scenes:
        union = sc.masks.any(0)
        # outside the objects the image is the background; objects never overlap
        assert np.array_equal(sc.image[~union], sc.background[~union])
        assert (sc.masks.sum(0) <= 1).all()
        for obj, m in zip(sc.objects, sc.masks):
            assert m.sum() == obj.area > 0
            x0, y0, x1, y1 = obj.box
            ys, xs = np.nonzero(m)
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
            # painted in the named colour (shaded, not flat): the mean is near the nominal colour
            pix = sc.image[m].astype(float)
            dists = {c: np.linalg.norm(pix.mean(0) - v) for c, v in shapes.COLOURS.items()}
            assert min(dists, key=dists.get) == obj.colour, (sc.seed, obj.name)
            assert pix.std(0).mean() > 3  # shaded/textured, not a flat fill


def test_mask_matches_shape_geometry():
    for shape in shapes.SHAPES:
        m = shapes.shape_mask(shape, 64, (32, 32), 12)
        assert m[32, 32] and not m[0, 0] and m.sum() > 150
    circle = shapes.shape_mask("circle", 64, (20.0, 40.0), 10)
    ys, xs = np.nonzero(circle)
    assert abs(xs.mean() + 0.5 - 20) < 0.5 and abs(ys.mean() + 0.5 - 40) < 0.5  # (x, y) centre


def test_caption_spans_name_the_objects(scenes):
    for sc in scenes:
        assert sc.caption.startswith(shapes.ORDERS[sc.order][1]) and sc.caption.endswith(".")
        for k, obj in enumerate(sc.objects):
            assert sc.caption[slice(*obj.phrase_span)] == f"a {obj.colour} {obj.shape}"
            assert sc.caption[slice(*obj.colour_span)] == obj.colour
            assert sc.caption[slice(*obj.shape_span)] == obj.shape
            assert sc.object_at_span(*obj.shape_span) == k
        # colours are unique in a scene, so a phrase names exactly one object
        assert len({o.colour for o in sc.objects}) == len(sc.objects)


def test_caption_order_follows_the_prompt(scenes):
    for sc in scenes:
        xs = [o.centre[0] for o in sc.objects]
        ys = [o.centre[1] for o in sc.objects]
        areas = [o.area for o in sc.objects]
        key = {"left": xs, "right": [-x for x in xs], "top": ys, "bottom": [-y for y in ys],
               "size": [-a for a in areas]}[sc.order]
        assert key == sorted(key)
    for order in shapes.ORDERS:
        assert shapes.make_scene(7, order=order, n_objects=3).order == order


def test_caption_round_trips_through_the_tokenizer(scenes):
    from attendseg.tiny import word_tokenizer

    tok = word_tokenizer(shapes.VOCABULARY)
    for sc in scenes[:10]:
        for text in (sc.caption, sc.prompt):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text


def test_seed_ranges_are_disjoint():
    train, held = shapes.TRAIN_SEEDS, shapes.HELDOUT_SEEDS
    assert train.stop <= held.start
    assert shapes.TUNE_SEEDS.start >= train.start and shapes.TUNE_SEEDS.stop <= train.stop
    test0, test1 = shapes.heldout_seeds(500), shapes.heldout_seeds(500, set_id=1)
    assert all(s in held for s in test0 + test1) and not set(test0) & set(test1)
    assert not set(test0) & set(shapes.DEMO_SEEDS) and all(s in held for s in shapes.DEMO_SEEDS)
    with pytest.raises(ValueError):
        shapes.heldout_seeds(10, set_id=1000)


# ----------------------------------------------------------------------------- aspect ratios
MIXED = [shapes.world_scene(s, "mixed") for s in range(60)]


def test_square_world_is_unchanged_by_aspect_ratios():
    """The scenes of the square world are those drawn before aspect ratios existed (the hash
    of six scenes from commit 83c5dcc's generator), and a mixed-world seed at 1:1 draws them."""
    import hashlib

    digest = hashlib.sha256()
    for seed in (0, 1, 7, 123, 1_000_000_000, 1_999_999_000):
        sc = shapes.make_scene(seed)
        digest.update(sc.image.tobytes())
        digest.update(sc.masks.tobytes())
        digest.update(sc.caption.encode())
    assert digest.hexdigest() == "b0d631eb8682a65ebc3d50f70ca2773ad8586dcff459db424bd686aa96521286"
    square = [sc for sc in MIXED if sc.aspect == "1:1"]
    assert square
    for sc in square:
        assert np.array_equal(sc.image, shapes.make_scene(sc.seed).image) and sc.caption == shapes.make_scene(sc.seed).caption
    assert all(shapes.world_scene(s, "square").aspect == "1:1" for s in range(5))


def test_mixed_world_draws_every_aspect_with_the_short_side_kept():
    assert {sc.aspect for sc in MIXED} == set(shapes.ASPECTS)
    for sc in MIXED:
        h, w = sc.image.shape[:2]
        assert min(h, w) == shapes.DEFAULT_SIZE and sc.size == shapes.DEFAULT_SIZE
        assert w / h == pytest.approx(shapes.ASPECTS[sc.aspect])
        assert sc.masks.shape == (len(sc.objects), h, w) and sc.background.shape == (h, w, 3)
    assert shapes.image_shape(64, 2.0) == (64, 128) and shapes.image_shape(64, 0.5) == (128, 64)
    with pytest.raises(ValueError):
        shapes.world_scene(1, "wide")
    with pytest.raises(ValueError):
        shapes.image_shape(64, 0.0)


def test_mixed_scenes_keep_masks_captions_and_orders_exact():
    for sc in MIXED:
        h, w = sc.image.shape[:2]
        union = sc.masks.any(0)
        assert np.array_equal(sc.image[~union], sc.background[~union]) and (sc.masks.sum(0) <= 1).all()
        key = {"left": lambda o: o.centre[0], "right": lambda o: -o.centre[0], "top": lambda o: o.centre[1],
               "bottom": lambda o: -o.centre[1], "size": lambda o: -o.area}[sc.order]
        assert [key(o) for o in sc.objects] == sorted(key(o) for o in sc.objects)  # caption order is the order
        axis_len = {"left": w, "right": w, "top": h, "bottom": h}.get(sc.order)
        for a, b in zip(sc.objects, sc.objects[1:]):
            if axis_len:  # unambiguous: centres far enough apart along the order's axis
                assert abs(key(b) - key(a)) >= shapes.ORDER_MARGIN * axis_len
        for obj, m in zip(sc.objects, sc.masks):
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and m.sum() == obj.area
            assert sc.caption[slice(*obj.phrase_span)] == f"a {obj.colour} {obj.shape}"
    wide = [sc for sc in MIXED if sc.aspect == "2:1"]
    xs = [o.centre[0] for sc in wide for o in sc.objects]
    assert max(xs) > 1.5 * shapes.DEFAULT_SIZE  # objects use the whole width, not a square part


def test_shuffled_order_baseline_equals_counting_every_permutation():
    """The random-order caption baseline, against enumerating every listing of each scene's
    objects (at most 4! of them) and counting those that read as the caption."""
    import itertools

    from attendseg.shapes.evaluation import shuffled_order_baseline

    scenes = [shapes.world_scene(s, "mixed") for s in range(60)]
    exact, colour_right, colour_words = [], 0.0, 0
    for scene in scenes:
        names = [o.name for o in scene.objects]
        listings = list(itertools.permutations(names))
        exact.append(sum(list(p) == names for p in listings) / len(listings))
        for k, obj in enumerate(scene.objects):  # teacher-forced: the first k objects given
            rest = list(itertools.permutations(scene.objects[k:]))
            colour_right += sum(p[0].colour == obj.colour for p in rest) / len(rest)
            colour_words += 1
    baseline = shuffled_order_baseline(scenes)
    assert baseline["caption_exact"] == pytest.approx(np.mean(exact))
    assert baseline["colour_words"] == pytest.approx(colour_right / colour_words)
    for order, value in baseline["by_order"].items():
        assert value == pytest.approx(np.mean([e for e, s in zip(exact, scenes) if s.order == order]))
    one = [s for s in scenes if len(s.objects) == 1]
    assert one and shuffled_order_baseline(one)["caption_exact"] == 1.0  # one object: nothing to order
