"""unsam.masks (boxes, resizing) and the RLE IoU matrix, on tiny arrays with values worked out by
hand.

PIL's bicubic resize (the original's, spec §2.2 step 11 / §3.3 step 1) is separable: a horizontal
pass, rounded and clipped to uint8, then a vertical pass. Output pixel i of an n_in -> n_out axis
has its centre at c = (i + 0.5) * s in input coordinates, s = n_in / n_out; input pixel j gets the
weight k((j + 0.5 - c) / f), f = max(s, 1), over the pixels inside the image only, normalised to
sum 1, with the Keys kernel (a = -0.5):
    k(x) = 1.5|x|^3 - 2.5|x|^2 + 1             for |x| < 1
    k(x) = -0.5|x|^3 + 2.5|x|^2 - 4|x| + 2      for 1 <= |x| < 2   (0 beyond; support 2f)
resize_mask resizes the 0/255 image and keeps the pixels above half of the result's maximum.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.reference.resize_naive import bicubic_resize_gray, resize_mask_naive
from unsam.masks import boxes_xyxy_from_masks, resize_image, resize_mask
from unsam.records import encode_mask, rle_iou_matrix

# The 2x3 mask of the resize tests (an L):
L_MASK = np.array([[1, 0, 0], [1, 1, 0]], dtype=bool)

# Weights of the 2x3 -> 5x7 upsampling (f = 1, no clipping of kernel width):
#   3 -> 7 (s = 3/7), rows = output columns, columns = input columns
#     [ 1.0962 -0.0962  0     ]   c = 0.214: k(0.286) = 0.8309, k(1.286) = -0.0729, / 0.7580
#     [ 0.9058  0.1025 -0.0083]   c = 0.643
#     [ 0.4404  0.6260 -0.0665]   c = 1.071
#     [ 0       1       0     ]   c = 1.5: exactly on input pixel 1 (k(0) = 1, k(1) = 0)
#     ... mirrored for outputs 4..6
#   2 -> 5 (s = 2/5): [1.0991 -0.0991], [0.9344 0.0656], [0.5 0.5], [0.0656 0.9344],
#                     [-0.0991 1.0991]
# Horizontal pass (rounded, clipped to 0..255):
#   row 0 (255, 0, 0):   255 * column 0 of the 3 -> 7 table
#                        = [279.5, 231.0, 112.3, 0, -17.0, -2.1, 0]
#                        -> [255, 231, 112, 0, 0, 0, 0]
#   row 1 (255, 255, 0): 255 * (column 0 + column 1)
#                        = [255, 257.1, 272.0, 255, 142.7, 24.0, -24.5]
#                        -> [255, 255, 255, 255, 143, 24, 0]
# Vertical pass: row 2 (weights 0.5 / 0.5) is the mean of the two rows, e.g. (112 + 255) / 2 = 183.5
# -> 184 and (0 + 255) / 2 = 127.5 -> 128; row 1 = 0.9344 * row 0 + 0.0656 * row 1, e.g. column 2:
# 0.9344 * 112 + 0.0656 * 255 = 121.4 -> 121; rows 0 / 4 overshoot and clip.
# The uint8 result (PIL gives exactly this, and so does tests/reference/resize_naive.py, the formula
# above in float64, rounded after each pass):
L_UP_VALUES = np.array(
    [
        [255, 229, 98, 0, 0, 0, 0],
        [255, 233, 121, 17, 9, 2, 0],
        [255, 243, 184, 128, 72, 12, 0],
        [255, 253, 246, 238, 134, 22, 0],
        [255, 255, 255, 255, 157, 26, 0],
    ],
    dtype=np.uint8,
)
# max 255 -> keep > 127.5 (the 128 at row 2, column 3 is just in; 121 and 134 are out / in):
L_UP = np.array(
    [
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 0, 0],
    ],
    dtype=bool,
)
# Back down 5x7 -> 2x3 (s = 7/3 and 5/2 > 1: the kernel is stretched by f, support 2f,
# antialiasing):
#   7 -> 3, output 0 (c = 1.167): [0.3831 0.4395 0.2137 0 -0.0323 -0.0040 0]
#   5 -> 2, output 0 (c = 1.25):  [0.3471 0.4156 0.2394 0.0292 -0.0313]
# giving [[221, 46, 0], [255, 235, 34]]; max 255 -> > 127.5: the L again.
L_DOWN_VALUES = np.array([[221, 46, 0], [255, 235, 34]], dtype=np.uint8)


def test_resize_mask_2x3_to_5x7_and_back() -> None:
    # the intermediate uint8 values are PIL's; pinned so that a change of the resampling shows
    up_values = np.asarray(
        Image.fromarray(L_MASK.astype(np.uint8) * 255).resize((7, 5), Image.BICUBIC)
    )
    np.testing.assert_array_equal(up_values, L_UP_VALUES)
    np.testing.assert_array_equal(
        bicubic_resize_gray(L_MASK.astype(np.uint8) * 255, 5, 7), L_UP_VALUES
    )
    up = resize_mask(L_MASK, (5, 7))
    assert up.dtype == bool and up.shape == (5, 7)
    np.testing.assert_array_equal(up, L_UP)
    down_values = np.asarray(
        Image.fromarray(L_UP.astype(np.uint8) * 255).resize((3, 2), Image.BICUBIC)
    )
    np.testing.assert_array_equal(down_values, L_DOWN_VALUES)
    np.testing.assert_array_equal(
        bicubic_resize_gray(L_UP.astype(np.uint8) * 255, 2, 3), L_DOWN_VALUES
    )
    np.testing.assert_array_equal(resize_mask(L_UP, (2, 3)), L_MASK)


def test_resize_mask_is_bicubic_not_bilinear() -> None:
    """[[1, 0, 1], [1, 1, 0]] -> 5x7, with the weights of the L test above.

    Horizontal pass: row 0 = 255 * (column 0 + column 2 of the 3 -> 7 table)
    = [279.5, 228.9, 95.4, 0, 95.4, 228.9, 279.5] -> [255, 229, 95, 0, 95, 229, 255];
    row 1 = [255, 255, 255, 255, 143, 24, 0] (as for the L). Output row 2 is their mean:
    [255, 242, 175, 127.5 -> 128, 119, 126.5 -> 127, 127.5 -> 128]; > 127.5 keeps columns 0-3
    and 6. A bilinear resize would give 128 at columns 3-6 of row 2 (all kept)."""
    mask = np.array([[1, 0, 1], [1, 1, 0]], dtype=bool)
    values = np.array(
        [
            [255, 226, 79, 0, 90, 249, 255],
            [255, 231, 105, 17, 98, 216, 238],
            [255, 242, 175, 128, 119, 127, 128],
            [255, 253, 245, 238, 140, 37, 17],
            [255, 255, 255, 255, 148, 4, 0],
        ],
        dtype=np.uint8,
    )
    expected = np.array(
        [
            [1, 1, 0, 0, 0, 1, 1],
            [1, 1, 0, 0, 0, 1, 1],
            [1, 1, 1, 1, 0, 0, 1],
            [1, 1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(bicubic_resize_gray(mask.astype(np.uint8) * 255, 5, 7), values)
    np.testing.assert_array_equal(resize_mask_naive(mask, 5, 7), expected)
    np.testing.assert_array_equal(resize_mask(mask, (5, 7)), expected)
    np.testing.assert_array_equal(resize_mask(expected, (2, 3)), mask)  # and back


def test_resize_mask_1x2_to_1x4() -> None:
    """2 -> 4 (s = 1/2). Output 1: c = 0.75, weights k(-0.25) = 0.8672 and k(0.75) = 0.2266, sum
    1.0938 -> 255 * 0.2266 / 1.0938 = 52.8 -> 53. Output 0: c = 0.25, k(0.25) = 0.8672 and k(1.25) =
    -0.0703 -> 255 * -0.0882 < 0 -> 0. By symmetry [0, 53, 202, 255]; > 127.5: [F, F, T, T]."""
    mask = np.array([[False, True]])
    np.testing.assert_array_equal(resize_mask(mask, (1, 4)), [[False, False, True, True]])
    np.testing.assert_array_equal(resize_mask(~mask, (1, 4)), [[True, True, False, False]])
    # 1x2 -> 4x1: columns 2 -> 1 (s = 2, f = 2, c = 1): k(-0.25) = k(0.25), equal weights -> 127.5,
    # rounded 128, on every row; the maximum is 128, so the threshold is 64 and every pixel is kept
    np.testing.assert_array_equal(resize_mask(mask, (4, 1)), [[True], [True], [True], [True]])


def test_resize_mask_threshold_is_half_of_the_maximum() -> None:
    """A single pixel at (1, 1) of a 4x4 mask, down to 2x2 (s = 2, f = 2, support 4).

    Weights 4 -> 2: output 0 (c = 1): k((j + 0.5 - 1) / 2) for j = 0..3:
    k(-0.25) = 0.8672, k(0.25) = 0.8672, k(0.75) = 0.2266, k(1.25) = -0.0703, sum 1.8906
    -> [0.4587, 0.4587, 0.1198, -0.0372]; output 1 mirrored -> [-0.0372, 0.1198, 0.4587, 0.4587].
    Row 1 after the horizontal pass: [255 * 0.4587, 255 * 0.1198] = [117, 31]; vertical pass:
    [[0.4587 * 117, 0.4587 * 31], [0.1198 * 117, 0.1198 * 31]] = [[54, 14], [14, 4]].
    The maximum is 54, so the threshold is 27: only (0, 0) survives (a fixed 127.5 would keep
    nothing).
    """
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    values = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((2, 2), Image.BICUBIC))
    np.testing.assert_array_equal(values, [[54, 14], [14, 4]])
    np.testing.assert_array_equal(resize_mask(mask, (2, 2)), [[True, False], [False, False]])


def test_resize_mask_edge_cases() -> None:
    # same size: an equal copy, not the input itself
    same = resize_mask(L_MASK, (2, 3))
    np.testing.assert_array_equal(same, L_MASK)
    assert same is not L_MASK
    same[0, 0] = False
    assert L_MASK[0, 0]
    # integer input is treated as a mask
    np.testing.assert_array_equal(resize_mask(L_MASK.astype(np.uint8), (5, 7)), L_UP)
    # empty stays empty (maximum 0)
    np.testing.assert_array_equal(
        resize_mask(np.zeros((3, 3), bool), (6, 5)), np.zeros((6, 5), bool)
    )
    with pytest.raises(ValueError, match=r"mask must be \(h, w\), got shape \(1, 2, 3\)"):
        resize_mask(L_MASK[None], (5, 7))


def test_resize_image_nearest_and_bicubic() -> None:
    # a 2x3 image whose pixels are (10 * row + col, 0, 255 - ...): every pixel distinct
    image = np.zeros((2, 3, 3), np.uint8)
    for r in range(2):
        for c in range(3):
            image[r, c] = (10 * r + c, 100 + c, 200 - r)
    # NEAREST 3 -> 7: source column floor((i + 0.5) * 3 / 7) = 0, 0, 1, 1, 1, 2, 2
    #         2 -> 5: source row floor((i + 0.5) * 2 / 5) = 0, 0, 1, 1, 1
    near = resize_image(image, (5, 7), Image.NEAREST)
    assert near.shape == (5, 7, 3) and near.dtype == np.uint8
    rows, cols = [0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 2, 2]
    np.testing.assert_array_equal(near, image[np.ix_(rows, cols)])
    near[0, 0] = 0  # writable
    # default bicubic, a 1x2 grey step -> 1x4: [0, 53, 202, 255] per channel (see the mask test)
    step = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    np.testing.assert_array_equal(resize_image(step, (1, 4))[0, :, 0], [0, 53, 202, 255])
    # a flat colour stays flat (the weights sum to 1)
    flat = np.full((3, 5, 3), (7, 120, 250), np.uint8)
    np.testing.assert_array_equal(
        resize_image(flat, (4, 2)), np.full((4, 2, 3), (7, 120, 250), np.uint8)
    )
    # already the size: the very same array
    assert resize_image(image, (2, 3)) is image


def _three_masks() -> np.ndarray:
    """Three masks on a 4x5 grid (rows y, columns x)."""
    m = np.zeros((3, 4, 5), bool)
    m[0, 1, 2] = m[0, 3, 0] = True  # two pixels: x 0..2, y 1..3
    m[2] = True  # everything
    return m  # m[1] empty


def test_boxes_xyxy_from_masks() -> None:
    # mask 0: x in {0, 2}, y in {1, 3} -> (0, 1, 3, 4) with exclusive x1 / y1; mask 1 empty ->
    # zeros;
    # mask 2 full 4x5 -> (0, 0, 5, 4)
    expected = np.array([[0, 1, 3, 4], [0, 0, 0, 0], [0, 0, 5, 4]])
    boxes = boxes_xyxy_from_masks(_three_masks())
    assert boxes.dtype == np.int64
    np.testing.assert_array_equal(boxes, expected)
    np.testing.assert_array_equal(boxes_xyxy_from_masks(torch.from_numpy(_three_masks())), expected)
    single = np.zeros((1, 6, 7), bool)
    single[0, 5, 6] = True  # the last pixel: (6, 5, 7, 6)
    np.testing.assert_array_equal(boxes_xyxy_from_masks(single), [[6, 5, 7, 6]])
    assert boxes_xyxy_from_masks(np.zeros((0, 3, 3), bool)).shape == (0, 4)
    with pytest.raises(ValueError, match=r"masks must be \(N, H, W\)"):
        boxes_xyxy_from_masks(np.zeros((3, 3), bool))


def test_rle_iou_matrix_hand_computed() -> None:
    """On a 4x4 grid: A = rows 0-1 (8 px), B = columns 0-1 (8 px), C = the single pixel (3, 3).

    A & B = the 2x2 corner = 4 px, A | B = 12 -> 1/3; A & C = 0 -> 0; B & C = 0 -> 0; each with
    itself 1. Against D = rows 0-1, columns 0-2 (6 px): A & D = 6, A | D = 8 -> 0.75;
    B & D = 4, B | D = 10 -> 0.4; C & D = 0 -> 0.
    """
    a, b, c, d = (np.zeros((4, 4), bool) for _ in range(4))
    a[0:2] = True
    b[:, 0:2] = True
    c[3, 3] = True
    d[0:2, 0:3] = True
    rles = [encode_mask(x) for x in (a, b, c)]
    iou = rle_iou_matrix(rles, rles + [encode_mask(d)])
    expected = np.array([[1.0, 1 / 3, 0.0, 0.75], [1 / 3, 1.0, 0.0, 0.4], [0.0, 0.0, 1.0, 0.0]])
    assert iou.shape == (3, 4)
    np.testing.assert_allclose(iou, expected, rtol=0, atol=1e-12)
