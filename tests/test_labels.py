"""labels: a labels CSV (or list) read, checked line by line, and matched to the photos of a map."""

import os

import pytest

from gridtsne import labels
from gridtsne.errors import OptionError
from gridtsne.options import PipelineOptions, RenderOptions

from .conftest import layout_workdir
from .test_render import CELLS


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def test_a_labels_file_with_a_header_matches_photos_by_their_resolved_path(tmp_path):
    photos = tmp_path / "photos"
    (photos / "cats").mkdir(parents=True)
    (tmp_path / "link").symlink_to(photos)
    csv = write(
        tmp_path / "labels.csv",
        "\ufeffpath,label\n"  # a BOM, as spreadsheets write it, and a header
        "photos/cats/a.jpg,cat\n"
        "\n"
        "photos/cats/../cats/b.jpg, cat \n"  # another spelling of the same folder; spaces trimmed
        "link/c.jpg,dog\n"  # through a link to the photo folder
        f'"{photos / "d, the first.jpg"}","a ""quoted"" label"\n'  # absolute, CSV quoting
        "elsewhere/e.jpg,bird\n",
    )
    found = labels.read_csv(csv)
    assert [entry.label for entry in found] == ["cat", "cat", "dog", 'a "quoted" label', "bird"]
    names = ["cats/a.jpg", "cats/b.jpg", "c.jpg", "d, the first.jpg", "unlabelled.jpg"]
    per_photo, unmatched = labels.match(found, [str(photos / name) for name in names])
    assert per_photo == ["cat", "cat", "dog", 'a "quoted" label', ""]
    assert [entry.where for entry in unmatched] == [f"{csv}, line 7"]


def test_the_header_is_optional_and_one_path_may_be_given_twice_with_the_same_label(tmp_path):
    csv = write(tmp_path / "labels.csv", "a.jpg,cat\r\nb.jpg,dog\r\na.jpg,cat\r\n")
    per_photo, unmatched = labels.match(
        labels.read_csv(csv), [str(tmp_path / "b.jpg"), str(tmp_path / "a.jpg")]
    )
    assert per_photo == ["dog", "cat"] and unmatched == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("path,label\na.jpg,cat\nb.jpg\n", "labels.csv, line 3: 1 columns; each row is path,label"),
        ("a.jpg,cat,extra\n", "labels.csv, line 1: 3 columns"),
        ("a.jpg,cat\nb.jpg,  \n", "labels.csv, line 2: the label of 'b.jpg' is empty"),
        ("a.jpg,cat\n,dog\n", "labels.csv, line 2: the path is empty"),
        ("a.jpg,cat\nb.jpg,dog\n./a.jpg,bird\n",
         "labels.csv, line 3: './a.jpg' is labelled 'bird' here and 'cat' on "),
    ],
)  # fmt: skip
def test_each_error_names_the_file_and_the_line(tmp_path, text, message):
    with pytest.raises(labels.LabelsError) as error:
        labels.read_csv(write(tmp_path / "labels.csv", text))
    assert message in str(error.value)
    if "labelled" in message:  # a duplicate names both lines
        assert str(error.value).endswith("labels.csv, line 1")


def test_an_unreadable_or_non_utf8_file_is_named(tmp_path):
    with pytest.raises(labels.LabelsError, match="missing.csv: cannot read the labels file"):
        labels.read_csv(tmp_path / "missing.csv")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"a.jpg,cat\nb.jpg,caf\xe9\n")
    with pytest.raises(labels.LabelsError, match=r"latin.csv, line 2: not UTF-8"):
        labels.read_csv(latin)


def test_control_characters_become_spaces_and_long_labels_are_kept(tmp_path):
    long_label = "y" * 4000
    csv = write(tmp_path / "labels.csv", f'a.jpg,"two\nlines\x07"\nb.jpg,{long_label}\n')
    assert [entry.label for entry in labels.read_csv(csv)] == ["two lines", long_label]


def test_the_label_table_is_most_common_first_and_each_photo_an_index_plus_one():
    names, index = labels.table(["dog", "cat", "", "cat", "bird", "dog", "cat"])
    assert names == ["cat", "dog", "bird"]
    assert index == [2, 1, 0, 1, 3, 2, 1]


def test_inline_labels_are_pairs_or_objects_and_bad_items_are_refused_naming_them():
    given = [{"path": "a.jpg", "label": "cat"}, ["b.jpg", "dog"]]
    options = RenderOptions(output="page.html", labels=given)
    assert options.labels == (("a.jpg", "cat"), ("b.jpg", "dog"))
    assert RenderOptions.from_dict(options.to_dict()) == options  # as a manifest records it
    assert RenderOptions(labels="labels.csv").labels == "labels.csv"
    refused = [([{"path": "a.jpg"}], "item 1"), ([["a.jpg", "cat"], ["b.jpg", " "]], "item 2: the label"),
               (7, "a CSV file")]  # fmt: skip
    for bad, words in refused:
        with pytest.raises(OptionError, match=words) as error:
            PipelineOptions.from_flat({"labels": bad})
        assert error.value.option == "labels"
    duplicated = [("x/../a.jpg", "cat"), ("a.jpg", "dog")]
    with pytest.raises(
        labels.LabelsError, match="labels item 2: 'a.jpg' is labelled 'dog' here and 'cat' on"
    ):
        labels.from_pairs(duplicated, base=os.getcwd())


def test_render_names_a_bad_line_of_labels_and_warns_of_paths_not_on_the_map(cli, tmp_path, colour_photos):
    work = layout_workdir(tmp_path / "work", colour_photos, CELLS, 3, 3)
    folder = colour_photos[0].parent
    bad = write(folder / "bad.csv", "red.jpg,warm\nblue.jpg\n")
    result = cli("render", tmp_path / "page.html", "-w", work.path, "--labels", bad)
    assert result.exit_code == 1
    assert f"--labels: {bad}, line 2: 1 columns" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "page").exists()

    good = write(folder / "good.csv", "red.jpg,warm\nblue.jpg,cold\nnot-a-photo.jpg,warm\ngone.jpg,x\n")
    result = cli("render", tmp_path / "page.html", "-w", work.path, "--labels", good)
    assert result.exit_code == 0, result.output
    assert "2 labelled path(s) are no photo of this layout" in result.stderr
    assert f"{good}, line 3: {folder / 'not-a-photo.jpg'}" in result.stderr

    result = cli("render", tmp_path / "m.jpg", "-w", work.path, "--labels", good)
    assert result.exit_code == 2 and "labels colour the web page" in result.stderr
