r"""Reading the raw keys of a dataset's ids (``brmrs_pyg.data.idmaps``): ``run.py prepare``'s
``.tsv`` files and MMRec's tab-separated ``.csv`` ones, and the files refused."""
import pytest

from brmrs_pyg.data.errors import DataError
from brmrs_pyg.data.idmaps import read_id_map, read_id_maps


def test_prepare_and_mmrec_layouts(tmp_path):
    (tmp_path / "u_id_mapping.tsv").write_text("user_id\tuserID\nann\t1\nbob\t0\n")
    (tmp_path / "i_id_mapping.csv").write_text("asin\titemID\nB1\t0\nB2\t1\nB3\t2\n")
    maps = read_id_maps(tmp_path, num_users=2, num_items=3)
    assert maps.user.column == "user_id" and maps.user.keys == ("bob", "ann")
    assert maps.item.column == "asin" and maps.item.ids_of(["B3", "B1"]) == [2, 0]
    assert maps.item.path == tmp_path / "i_id_mapping.csv"


def test_lfm2k_layout_comma_csv_and_no_file(tmp_path):
    # lfm2k: the id column first, the key next, more columns after it (ignored)
    (tmp_path / "i_id_mapping.tsv").write_text("itemID\tartistID\tname\n1\t66\tX\n0\t80\tY\n")
    (tmp_path / "u_id_mapping.csv").write_text('userID,name\n0,"Smith, J"\n')
    maps = read_id_maps(tmp_path, num_users=1, num_items=2)
    assert maps.item.column == "artistID" and maps.item.keys_of([0, 1]) == ["80", "66"]
    assert maps.user.keys == ("Smith, J",)
    assert read_id_map(tmp_path / "nowhere", "user", 3) is None


@pytest.mark.parametrize("text, count, message", [
    ("user_id\tuserID\na\t0\nb\t2\n", 2, r"each id 0\.\.1 of the dataset exactly once"),
    ("user_id\tuserID\na\t0\n", 2, r"\(1 rows; the dataset has 2 users\)"),
    ("user_id\tuserID\na\t0\na\t1\n", 2, "user_id 'a' is the key of user ids 0 and 1"),
    ("user_id\tuserID\na\tx\n", 1, "column userID must hold integer ids"),
    ("userID\n0\n", 1, "no raw key column beside 'userID'"),
    ("user_id\tid\na\t0\n", 1, "no column 'userID'"),
])
def test_refused_files(tmp_path, text, count, message):
    (tmp_path / "u_id_mapping.tsv").write_text(text)
    with pytest.raises(DataError, match=message):
        read_id_map(tmp_path, "user", count)
