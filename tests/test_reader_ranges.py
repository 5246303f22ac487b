"""Reading a CSV file in byte ranges (reader.file_ranges, reader.range_rows) gives the rows of
reading it whole, each once, wherever the cuts fall, and names a malformed row as whole-file
reading does."""
import gzip
import os
import shutil

import pytest

from hap.data import contract as c
from hap.data import reader

# Line endings and last-line endings of the small files every cut is tried on.
LAYOUTS = {
    "lf": ("\n", True),
    "lf, no final line break": ("\n", False),
    "crlf": ("\r\n", True),
    "crlf, no final line break": ("\r\n", False),
}


@pytest.fixture(scope="module")
def kinds(tiny_csv):
    return c.load_features(tiny_csv).column_kinds()


def _tiny_lines(tiny_csv, count):
    """The header and the first `count - 1` rows of a tiny_csv file, without line breaks."""
    with open(os.path.join(tiny_csv, "samples", "day-1.csv")) as f:
        return [next(f).rstrip("\n") for _ in range(count)]


def _write(path, lines, newline="\n", final_break=True):
    with open(path, "w", newline="") as f:
        f.write(newline.join(lines) + (newline if final_break else ""))
    return str(path)


def _rows_of(ranges, kinds):
    return [row for file_range in ranges for row in reader.range_rows(file_range, kinds)]


def _error_of(read):
    with pytest.raises(c.ContractError) as error:
        read()
    return str(error.value)


@pytest.fixture(params=LAYOUTS, scope="module")
def small_csv(request, tiny_csv, tmp_path_factory):
    newline, final_break = LAYOUTS[request.param]
    path = tmp_path_factory.mktemp("small") / "day-1.csv"
    return _write(path, _tiny_lines(tiny_csv, 4), newline, final_break)


def test_two_ranges_read_every_row_once_wherever_the_cut(small_csv, kinds):
    whole = list(reader.file_rows(small_csv, kinds))
    size = os.path.getsize(small_csv)
    header = tuple(reader.csv_header(small_csv))
    assert len(whole) == 3
    for cut in range(size + 1):  # in the header, at and beside every line break, at EOF
        ranges = [reader.FileRange(small_csv, 0, cut, header), reader.FileRange(small_csv, cut, size, header)]
        assert _rows_of(ranges, kinds) == whole, f"cut at byte {cut}"


def test_every_range_size_reads_every_row_once(small_csv, kinds):
    whole = list(reader.file_rows(small_csv, kinds))
    size = os.path.getsize(small_csv)
    for range_bytes in range(1, size + 2):
        assert _rows_of(reader.file_ranges(small_csv, range_bytes), kinds) == whole, f"{range_bytes} bytes"


def test_ranges_tile_the_file_and_carry_its_header(small_csv):
    size = os.path.getsize(small_csv)
    ranges = reader.file_ranges(small_csv, 100)
    assert [r.start for r in ranges] == list(range(0, size, 100))
    assert [r.end for r in ranges] == [r.start for r in ranges[1:]] + [size]
    assert {r.header for r in ranges} == {tuple(reader.csv_header(small_csv))}
    assert reader.file_ranges(small_csv, size) == [reader.FileRange(small_csv)]
    with pytest.raises(ValueError, match="range_bytes"):
        reader.file_ranges(small_csv, 0)


def test_a_large_file_in_tiny_ranges(tiny_csv, kinds):
    path = os.path.join(tiny_csv, "samples", "day-1.csv")
    ranges = reader.file_ranges(path, 300)
    assert len(ranges) > 1000
    assert _rows_of(ranges, kinds) == list(reader.file_rows(path, kinds))


def _with_quoted_line_break(tiny_csv, tmp_path):
    lines = _tiny_lines(tiny_csv, 4)
    header = lines[0].split(",")
    fields = lines[2].split(",")
    fields[header.index("content_type")] = '"short\nvideo, long"'
    lines[2] = ",".join(fields)
    return _write(tmp_path / "quoted.csv", lines)


def _with_lone_carriage_return(tiny_csv, tmp_path):
    return _write(tmp_path / "lone_cr.csv", _tiny_lines(tiny_csv, 4), newline="\r")


def _gzipped(tiny_csv, tmp_path):
    path = str(tmp_path / "day-1.csv.gz")
    with gzip.open(path, "wt", newline="") as f:
        f.write("\n".join(_tiny_lines(tiny_csv, 4)) + "\n")
    return path


@pytest.mark.parametrize("make", [_with_quoted_line_break, _with_lone_carriage_return, _gzipped],
                         ids=["quoted line break", "lone carriage return", "gzip"])
def test_a_file_whose_lines_need_not_be_records_is_one_range(make, tiny_csv, tmp_path, kinds):
    path = make(tiny_csv, tmp_path)
    whole = list(reader.file_rows(path, kinds))
    assert len(whole) == 3
    assert reader.file_ranges(path, 1) == [reader.FileRange(path)]
    assert _rows_of(reader.file_ranges(path, 1), kinds) == whole


def test_a_tfrecord_file_is_one_range(tiny_tfrecord, kinds):
    path = reader.data_files(os.path.join(tiny_tfrecord, "samples"))[1][0]
    assert reader.file_ranges(path, 1) == [reader.FileRange(path)]
    assert _rows_of(reader.file_ranges(path, 1), kinds) == list(reader.file_rows(path, kinds))


def _bad_day(line):
    fields = line.split(",")
    fields[3] = "tuesday"
    return ",".join(fields)


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("spoil", [_bad_day, lambda line: "", lambda line: line.rsplit(",", 1)[0]],
                         ids=["malformed value", "blank line", "missing field"])
def test_a_malformed_row_in_a_later_range_names_its_file_and_line(spoil, newline, tiny_csv, tmp_path, kinds):
    lines = _tiny_lines(tiny_csv, 12)
    lines[8] = spoil(lines[8])
    path = _write(tmp_path / "day-1.csv", lines, newline)
    expected = _error_of(lambda: list(reader.file_rows(path, kinds)))
    assert "day-1.csv:9: " in expected
    for range_bytes in (1, 97, 300, 4096):
        ranges = reader.file_ranges(path, range_bytes)
        assert len(ranges) > 1
        assert _error_of(lambda: _rows_of(ranges, kinds)) == expected, f"{range_bytes} bytes"


def test_the_line_of_a_malformed_row_counts_the_lines_before_its_range(tiny_csv, tmp_path, kinds):
    ds = tmp_path / "ds"
    shutil.copytree(tiny_csv, ds)
    path = str(ds / "samples" / "day-1.csv")
    with open(path) as f:
        lines = f.readlines()
    lines[1200] = _bad_day(lines[1200])
    with open(path, "w") as f:
        f.writelines(lines)
    ranges = reader.file_ranges(path, 300)
    with pytest.raises(c.ContractError, match=r"day-1\.csv:1201: column 'day': not an integer: 'tuesday'"):
        _rows_of(ranges[len(ranges) // 2:], kinds)
