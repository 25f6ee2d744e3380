"""regions: the names of large areas of the map, from labels, folders or words of file names."""

import numpy as np

from gridtsne import regions


def halves(rows, cols):
    """Photo p in cell p of a full grid; whether each is in the left half."""
    cells = np.arange(rows * cols)
    return cells, (cells % cols) < cols // 2


def test_a_grid_whose_left_half_is_folder_a_and_right_half_b_is_named_a_and_b():
    cells, left = halves(6, 8)
    folders = regions.single_values(np.where(left, 0, 1), ["A", "B"])
    found = regions.name_regions(cells, 6, 8, [folders])
    assert [(r.name, r.box) for r in found] == [("A", (0, 0, 4, 6)), ("B", (4, 0, 8, 6))]


def test_labels_are_tried_before_folders_and_words_after_them():
    cells, left = halves(8, 8)
    labelled = regions.single_values(np.where(left, 0, -1), ["cats"])  # only the left half has labels
    folders = regions.single_values(np.zeros(64, dtype=int), ["everything"])  # one folder: names nothing
    names = [f"DSC{i}.jpg" if on_left else f"IMG_{i:04d} snow-{i}.JPG" for i, on_left in enumerate(left)]
    found = regions.name_regions(cells, 8, 8, [labelled, folders, regions.word_values(names)])
    assert [(r.name, r.box) for r in found] == [("cats", (0, 0, 4, 8)), ("snow", (4, 0, 8, 8))]


def test_words_of_file_names_leave_out_digits_extensions_and_camera_prefixes():
    assert regions.words_of("IMG_2041 Beach-Sunset_2.JPG") == {"beach", "sunset"}
    assert regions.words_of("DSC00012.jpeg") == set()
    assert regions.words_of("photo of a café.png") == {"café"}
    assert regions.words_of("x" * 40 + ".png") == {"x" * 40}


def test_without_a_clear_majority_a_block_has_no_name_and_long_names_are_cut():
    cells = np.arange(36)
    mixed = regions.single_values(cells % 3, ["red", "green", "blue"])  # a third each, everywhere
    assert regions.name_regions(cells, 6, 6, [mixed]) == []
    long = regions.single_values((cells % 6 >= 3).astype(int), ["y" * 4000, "short"])
    names = [r.name for r in regions.name_regions(cells, 6, 6, [long])]
    assert names == ["y" * (regions.NAME_CHARS - 1) + "\u2026", "short"]


def test_a_finer_block_inside_a_larger_region_of_the_same_name_is_left_out():
    cells = np.arange(16 * 16)
    left = (cells % 16) < 8
    kinds = [regions.single_values(np.where(left, 0, 1), ["A", "B"])]
    found = regions.name_regions(cells, 16, 16, kinds)
    assert [(r.name, r.scale) for r in found] == [("A", 1), ("B", 1)]  # not again at 1/4, 1/8 of the grid
