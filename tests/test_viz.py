"""Visualisation: sizes, exact mask tint, caption colours, empty groundings, grids and sheets."""

import numpy as np
import pytest
from PIL import Image

from attendseg import viz
from attendseg.results import GroundedPhrase, Grounding


def _phrase(answer, text, mask, points, idx_tokens=(0,)):
    s = answer.index(text)
    return GroundedPhrase(text, (s, s + len(text)), text.split()[-1], idx_tokens, points, mask, None, 0.9)


@pytest.fixture
def scene(photos):
    img = photos["coffee"]  # 400 × 600
    h, w = img.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    cup = ((xx - 300) ** 2 + (yy - 200) ** 2) < 120**2
    saucer = (np.abs(xx - 300) < 250) & (np.abs(yy - 320) < 40) & ~cup
    answer = "A cup of coffee sits on a white saucer on a table."
    g = Grounding((w, h), answer, "", "m", "threshold", [
        _phrase(answer, "A cup", cup, [[300.0, 200.0]]),
        _phrase(answer, "a white saucer", saucer, [[90.0, 320.0]]),
        _phrase(answer, "a table", None, [[20.0, 380.0]]),
    ])
    return img, g


def test_palette_is_fixed_and_distinct():
    assert viz.color_for(0) == viz.PALETTE[0] and viz.color_for(len(viz.PALETTE)) == viz.PALETTE[0]
    assert len(set(viz.PALETTE)) == len(viz.PALETTE) >= 10


def test_overlay_size_and_exact_tint(scene):
    img, g = scene
    out = viz.overlay(img, g, alpha=0.5)
    h, w = img.shape[:2]
    assert isinstance(out, Image.Image) and out.mode == "RGB"
    assert out.width == w and out.height > h  # caption strip below
    a = np.asarray(out)[:h].astype(int)
    # a pixel deep inside the cup mask, away from its outline and point: exact blend
    for (y, x), idx in [((150, 250), 0), ((320, 120), 1)]:
        want = np.round(0.5 * img[y, x] + 0.5 * np.array(viz.color_for(idx))).astype(int)
        np.testing.assert_array_equal(a[y, x], want)
    # outside every mask (and away from the points) the image is untouched
    np.testing.assert_array_equal(a[20, 20], img[20, 20])
    np.testing.assert_array_equal(a[:5], img[:5])
    # the outline is drawn in the phrase colour
    cup = g.phrases[0].mask
    ys, xs = np.nonzero(cup)
    top = (ys.min(), xs[ys == ys.min()][0])
    np.testing.assert_array_equal(a[top], viz.color_for(0))
    # the point is marked: its centre pixel has the phrase colour
    np.testing.assert_array_equal(a[200, 300], viz.color_for(0))


def test_caption_colours_phrases(scene):
    img, g = scene
    out = np.asarray(viz.overlay(img, g))
    strip = out[img.shape[0]:].reshape(-1, 3)
    colours = {tuple(c) for c in np.unique(strip, axis=0)}
    for i in range(3):  # underline in the exact palette colour, also for the phrase without a mask
        assert viz.color_for(i) in colours
    no_caption = viz.overlay(img, g, caption=False)
    assert no_caption.size == (img.shape[1], img.shape[0])


def test_empty_grounding_renders(photos):
    img = photos["chelsea"]
    h, w = img.shape[:2]
    out = viz.overlay(img, Grounding((w, h), "", "", "m", "r", []))
    assert out.size == (w, h)
    np.testing.assert_array_equal(np.asarray(out), img)
    # an answer with no phrase: the caption is there, in plain text colour
    out = viz.overlay(img, Grounding((w, h), "Nothing to see here.", "", "m", "r", []))
    assert out.width == w and out.height > h
    np.testing.assert_array_equal(np.asarray(out)[:h], img)


def test_overlay_inputs(scene):
    img, g = scene
    a = viz.overlay(Image.fromarray(img), g)
    b = viz.overlay(img.astype(np.float32) / 255.0, g)
    assert a.size == b.size == viz.overlay(img, g).size
    with pytest.raises(ValueError):
        viz.overlay(img[:-1], g)


def test_long_caption_wraps(photos):
    img = photos["astronaut"][:100, :120]
    answer = " ".join(["word"] * 60) + " " + "x" * 80  # long, with one unbreakable word
    out = viz.overlay(img, Grounding((120, 100), answer, "", "m", "r", []))
    assert out.width == 120 and out.height > 100 + 5 * 11


def test_heatmap_grid(photos, rng):
    img = photos["rocket"]  # 427 × 640
    h, w = img.shape[:2]
    maps = rng.random((5, h, w)).astype(np.float32)
    maps[2] = np.nan
    grid = viz.heatmap_grid(img, ["A", " rocket", "\n", "on", "pad"], maps, ncols=3, panel_width=100, gap=4)
    ph = round(100 * h / w)
    title_h = 10 + 6
    assert grid.size == (3 * 100 + 4 * 4, 2 * (title_h + ph) + 3 * 4)
    # torch maps and one column
    torch = pytest.importorskip("torch")
    g1 = viz.heatmap_grid(img, list("abc"), torch.from_numpy(maps[:3]), ncols=1, panel_width=100)
    assert g1.size == (100 + 2 * 4, 3 * (title_h + ph) + 4 * 4)
    # a hot spot shows in its panel: the hot corner is redder than the cold one
    m = np.zeros((1, h, w), np.float32)
    m[0, : h // 4, : w // 4] = 1.0
    p = np.asarray(viz.heatmap_grid(img, ["hot"], m, panel_width=100, alpha=1.0)).astype(int)
    hot, cold = p[4 + title_h + 5, 4 + 5], p[4 + title_h + ph - 5, 4 + 95]
    assert hot[0] > cold[0] and hot[2] < cold[2]
    # no tokens still renders; wrong shapes raise
    assert viz.heatmap_grid(img, [], np.zeros((0, h, w))).size[0] > 0
    with pytest.raises(ValueError):
        viz.heatmap_grid(img, ["a"], np.zeros((1, h, w + 1)))
    with pytest.raises(ValueError):
        viz.heatmap_grid(img, ["a", "b"], np.zeros((1, h, w)))


def test_contact_sheet(photos):
    ims = [Image.fromarray(a) for a in photos.values()]  # 4 images of different sizes
    cw, ch = max(i.width for i in ims), max(i.height for i in ims)
    sheet = viz.contact_sheet(ims, ncols=3, pad=8)
    assert sheet.size == (3 * cw + 4 * 8, 2 * ch + 3 * 8)
    assert viz.contact_sheet(ims[:1], ncols=5, pad=2).size == (ims[0].width + 4, ims[0].height + 4)
    titled = viz.contact_sheet(ims, ncols=2, titles=list("abcd"))
    assert titled.size == (2 * cw + 3 * 8, 2 * (ch + 20) + 3 * 8)
    with pytest.raises(ValueError):
        viz.contact_sheet([], 2)


def test_tint_keeps_the_colour_words_true():
    """Inside a mask the object's own colour must still read as its name ("a green bar" is not
    brown): for every shapes-world colour under every phrase colour, the tinted pixel's nearest
    named colour is the object's."""
    from attendseg import shapes

    names = list(shapes.COLOURS)
    named = np.array([shapes.COLOURS[n] for n in names], float)
    for name, rgb in shapes.COLOURS.items():
        img = np.tile(np.array(rgb, np.uint8), (40, 40, 1))
        mask = np.zeros((40, 40), bool)
        mask[10:30, 10:30] = True
        for i in range(len(viz.PALETTE)):
            phrases = [GroundedPhrase("x", (0, 1), "x", (0,), np.zeros((0, 2)), None, None, 0.0)] * i
            phrases.append(GroundedPhrase("x", (0, 1), "x", (0,), np.zeros((0, 2)), mask, None, 0.9))
            out = np.asarray(viz.overlay(img, Grounding((40, 40), "", "", "m", "r", phrases), caption=False))
            tinted = out[20, 20].astype(float)
            assert names[np.argmin(((named - tinted) ** 2).sum(1))] == name, (name, i, tinted)


def test_wrapped_lines_never_start_with_punctuation():
    answer = "from top to bottom, a green bar, an orange bar, a red square and a yellow bar."
    spans = [(m.start(), m.end(), i) for i, m in enumerate(__import__("re").finditer(r"bar|square", answer))]
    segs = viz._caption_segments(answer, spans)
    for width in range(60, 420, 3):
        lines = viz._layout(segs, width, 11, 4)
        assert "".join(t for line in lines for _, t, _ in line).replace(" ", "") == answer.replace(" ", "")
        starts = [line[0][1] for line in lines if line]
        assert not any(s[0] in ",.;:" for s in starts), (width, starts)


def test_readable_shapes_captions_say_an_orange():
    from attendseg import shapes

    answer = "from left to right, a orange star and a red circle."
    star, circle = answer.index("a orange star"), answer.index("circle")
    mask = np.ones((4, 4), bool)
    g = Grounding((4, 4), answer, "", "m", "r", [
        GroundedPhrase("a orange star", (star, star + 13), "star", (5,), np.zeros((0, 2)), mask, None, 0.9),
        GroundedPhrase("circle", (circle, circle + 6), "circle", (9,), np.zeros((0, 2)), mask, None, 0.9)])
    shown = shapes.readable(g)
    assert shown.answer == "from left to right, an orange star and a red circle."
    assert [shown.answer[slice(*p.span)] for p in shown.phrases] == ["an orange star", "circle"]
    assert [p.text for p in shown.phrases] == ["an orange star", "circle"] and shown.phrases[0].mask is mask
    assert g.answer == answer  # the result itself keeps the model's words
    assert shapes.make_scene(shapes.DEMO_SEEDS[2]).caption.count("a orange") == 1  # what the model learnt
