"""The LLaVA adapter's View geometry, proved through the model's own patch embeddings.

Perturbing original-image pixels inside the box of a block of grid cells (inset by the
resampling filter's reach) must change the patch embeddings of exactly those cells; perturbing
pixels the processor crops away must change nothing.
"""

import math

import numpy as np
import pytest
import torch
from PIL import Image

import attendseg


@pytest.fixture(scope="module", params=["tiny_llava", "tiny_llava_gqa_pad"])
def attender(request):
    return attendseg.load(request.getfixturevalue(request.param))


def image_view(attender, image):
    """The View the adapter derives from the processor's output for this image."""
    return attender.adapter.prepare([image], ["describe the image"]).views[0][0]


def patch_embeddings(attender, image):
    """[h, w, C] conv patch embeddings of one image, straight from the vision tower."""
    pixel_values = attender.processor(images=[image], text=["<image>"], return_tensors="pt")["pixel_values"]
    conv = attender.model.model.vision_tower.embeddings.patch_embedding
    with torch.no_grad():
        return conv(pixel_values.float())[0].permute(1, 2, 0)


def changed_cells(attender, base, perturbed):
    diff = (patch_embeddings(attender, base) - patch_embeddings(attender, perturbed)).abs().amax(-1)
    return {tuple(rc) for rc in torch.nonzero(diff > 1e-6).tolist()}


def perturb(array, x0, y0, x1, y1):
    out = array.copy()
    xs = slice(max(0, math.ceil(x0)), min(array.shape[1], math.floor(x1)))
    ys = slice(max(0, math.ceil(y0)), min(array.shape[0], math.floor(y1)))
    out[ys, xs] = 255 - out[ys, xs]
    return Image.fromarray(out)


@pytest.mark.parametrize("height, width", [(120, 200), (210, 130), (97, 151)])
@pytest.mark.parametrize("block", [(1, 2, 3, 5), (5, 0, 7, 3), (0, 5, 2, 7)])
def test_perturbing_a_region_changes_exactly_its_cells(attender, photos, height, width, block):
    photo = np.asarray(Image.fromarray(photos["astronaut"]).resize((width, height)))
    view = image_view(attender, Image.fromarray(photo))
    r0, c0, r1, c1 = block  # cells rows r0..r1, columns c0..c1 (inclusive)
    x0, y0, _, _ = view.cell_box(r0, c0)
    _, _, x1, y1 = view.cell_box(r1, c1)
    cell_w, cell_h = view.cell_size
    # The bicubic filter reads 2 source pixels per output pixel when upsampling, 2·scale when
    # downsampling: inset the perturbed region by that reach so no neighbour cell sees it.
    reach = 2 * max(1.0, cell_w / attender.processor.patch_size) + 1
    assert reach < cell_w / 2, "the test needs cells larger than the filter's reach"
    region = (max(x0, 0) + reach, max(y0, 0) + reach, min(x1, width) - reach, min(y1, height) - reach)
    expected = {
        (r, c)
        for r in range(r0, r1 + 1)
        for c in range(c0, c1 + 1)
        # cells that lie wholly in padding contain no image pixel: nothing to perturb there
        if view.cell_box(r, c)[2] > 0 and view.cell_box(r, c)[0] < width
        and view.cell_box(r, c)[3] > 0 and view.cell_box(r, c)[1] < height
    }
    got = changed_cells(attender, Image.fromarray(photo), perturb(photo, *region))
    assert got == expected


def test_cropped_away_pixels_change_nothing(request, photos):
    attender = attendseg.load(request.getfixturevalue("tiny_llava"))
    photo = np.asarray(Image.fromarray(photos["coffee"]).resize((200, 100)))
    x0, _, x1, _ = image_view(attender, Image.fromarray(photo)).box
    assert x0 > 40 and x1 < 160  # centre crop of a 2:1 image keeps the middle square
    left_strip = perturb(photo, 0, 0, x0 - 4, 100)
    right_strip = perturb(photo, x1 + 4, 0, 200, 100)
    assert changed_cells(attender, Image.fromarray(photo), left_strip) == set()
    assert changed_cells(attender, Image.fromarray(photo), right_strip) == set()
    assert changed_cells(attender, Image.fromarray(photo), perturb(photo, x0 + 6, 0, x0 + 20, 100))
