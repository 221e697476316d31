import numpy as np
import pytest

from personalize.data import (
    DataError,
    FeatureMatrix,
    load_aadb_raters,
    load_flickr_aes,
    load_personal_albums,
    performance_score,
)


def _write(path, text):
    path.write_text(text)
    return path


def test_performance_score_eq1():
    np.testing.assert_array_equal(performance_score([1, 2, 3, 4, 5, 5], [1, 1, 1, 1, 1, 5]),
                                  [1, 1, 0.5, 0, 0, 1])


def test_flickr_aes_wp_exclusion_and_weighted_means(tmp_path):
    csv = _write(tmp_path / "r.csv", " worker, imagePair, score\n"
                 "good,a.jpg,4\ngood,b.jpg,2\ngood,chk1.jpg,1\ngood,chk5.jpg,5\n"
                 "ok,a.jpg,2\nok,chk1.jpg,3\nok,chk5.jpg,5\n"  # WP (0.5 + 1) / 2 = 0.75
                 "rand,a.jpg,1\nrand,chk1.jpg,5\nrand,chk5.jpg,1\n"  # WP 0 -> excluded
                 "test,c.jpg,5\ntest,chk1.jpg,2\ntest,chk5.jpg,4\n")
    checks = _write(tmp_path / "checks.csv", "imagePair,score\nchk1.jpg,1\nchk5.jpg,5\n")
    tests = _write(tmp_path / "test_workers.txt", "test\n")
    data = load_flickr_aes(csv, tests, checks)
    assert data.worker_performance == {"good": 1.0, "ok": 0.75, "rand": 0.0, "test": 1.0}
    assert data.excluded_workers == {"rand"}
    assert data.train_workers == ["good", "ok"] and data.test_workers == {"test"}
    assert "chk1.jpg" not in data.ratings.images
    images, im, std, n = data.weighted_means(data.train_workers)
    a = images.tolist().index("a.jpg")
    assert im[a] == pytest.approx((1.0 * 4 + 0.75 * 2) / 1.75)
    expected_std = np.sqrt((1.0 * (4 - im[a]) ** 2 + 0.75 * (2 - im[a]) ** 2) / (0.5 * 1.75))
    assert std[a] == pytest.approx(expected_std) and n[a] == 2
    assert np.isnan(std[images.tolist().index("b.jpg")])


@pytest.mark.parametrize(("body", "problem"), [
    ("worker,imagePair,score\nw,a,3\nw,b,7\n", "r.csv:3: score '7' is outside"),
    ("worker,imagePair,score\nw,a,3\nw,b,x\n", "r.csv:3: score 'x' is not a number"),
    ("worker,imagePair,score\nw,a,3.5\n", "r.csv:2: score '3.5' is not an integer"),
    ("worker,imagePair,score\nw,a,3\nw,a,4\n", "r.csv:3: worker 'w' rated 'a' again (first on line 2)"),
    ("worker,imagePair,score\nw,a\n", "r.csv:2: 2 fields, expected 3"),
    ("worker,image_name,score\nw,a,3\n", "r.csv:1: missing column 'imagePair'"),
    ("worker,imagePair,score\n,a,3\n", "r.csv:2: empty worker"),
    ("", "r.csv:1: empty file"),
])
def test_bad_rating_files_name_file_line_and_problem(tmp_path, body, problem):
    csv = _write(tmp_path / "r.csv", body)
    with pytest.raises(DataError) as err:
        load_flickr_aes(csv)
    assert problem in str(err.value)


def test_missing_file_and_unknown_test_worker(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: cannot open"):
        load_flickr_aes(tmp_path / "nope.csv")
    csv = _write(tmp_path / "r.csv", "worker,imagePair,score\nw,a,3\n")
    with pytest.raises(DataError, match="test workers with no ratings"):
        load_flickr_aes(csv, ["ghost"])


def test_aadb_raters(tmp_path):
    csv = _write(tmp_path / "aadb.csv", "imageName\tworkerID\tscore\nfarm1_1.jpg\tA12\t4\nfarm1_2.jpg\tA12\t2\n")
    r = load_aadb_raters(csv)
    assert r.by_worker()["A12"][0].tolist() == ["farm1_1.jpg", "farm1_2.jpg"]


def test_personal_albums_three_layouts(tmp_path):
    (tmp_path / "folders" / "ann").mkdir(parents=True)
    _write(tmp_path / "folders" / "ann" / "scores.csv", "image,score\nIMG_1.jpg,4.5\nIMG_2.jpg,2\n")
    albums = load_personal_albums(tmp_path / "folders")
    assert albums["ann"][0].tolist() == ["ann/IMG_1.jpg", "ann/IMG_2.jpg"]
    assert albums["ann"][1].tolist() == [4.5, 2.0]
    (tmp_path / "csvs").mkdir()
    _write(tmp_path / "csvs" / "bob.csv", "image,score\nx.jpg,3\n")
    assert list(load_personal_albums(tmp_path / "csvs")) == ["bob"]
    one = _write(tmp_path / "all.csv", "owner,image,score\nbob,x.jpg,3\ncid,y.jpg,5\n")
    assert sorted(load_personal_albums(one)) == ["bob", "cid"]
    _write(tmp_path / "csvs" / "bad.csv", "image,score\nx.jpg,3\nx.jpg,4\n")
    with pytest.raises(DataError, match=r"bad.csv:3: image 'x.jpg' scored again"):
        load_personal_albums(tmp_path / "csvs")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no albums"):
        load_personal_albums(tmp_path / "empty")


def test_feature_matrix(rng):
    n = 4
    fm = FeatureMatrix(np.array(["a", "b", "c", "d"]), rng.uniform(1, 5, n), rng.random((n, 176)),
                       rng.uniform(-1, 1, (n, 10)), rng.dirichlet(np.ones(10), n))
    rows = fm.rows(["c", "a"])
    assert rows.tolist() == [2, 0]
    assert fm.X(rows).shape == (2, 21) and fm.X(rows)[0, -1] == fm.aes_score[2]
    np.testing.assert_allclose(fm.V(rows)[1, :176], 0.001 * fm.aes_feat[0])
    with pytest.raises(DataError, match="no row for 1 rated image"):
        fm.rows(["zz"])
    with pytest.raises(DataError, match="duplicate image ids"):
        FeatureMatrix(np.array(["a", "a", "c", "d"]), fm.aes_score, fm.aes_feat, fm.attributes, fm.content)
