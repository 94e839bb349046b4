"""Bank search: exact top-k against a brute-force reference, geographic windows, confidence
margins, the local metric frame, the compressed index (two-stage search, FAISS and numpy scans,
verification) and (on a GPU) CuPy. Banks are real folders on disk.

Also run on Python 3.8 with numpy < 1.25 and no FAISS (.ci/onboard-py38): Python 3.8 syntax."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from pyproj import Geod

from meanloc.errors import ArtifactMismatchError, MeanlocError
from meanloc.runtime.bank import LocalFrame, SatelliteBank, SearchWindow, build_index, verify_bank
from meanloc.runtime.bank import bank as bank_module
from meanloc.runtime.bank.index import (
    CODES_FILE,
    INDEX_FILES,
    IndexSearcher,
    _popcount_rows,
    faiss_or_none,
    nearest_rows,
)
from meanloc.runtime.bank.search import ExactSearcher, blocked_topk
from meanloc.runtime.bank.store import read_manifest, set_manifest_section, write_bank
from meanloc.runtime.bank.tiles import records_from_rows
from meanloc.runtime.identity import ModelIdentity
from meanloc.runtime.preprocess import PreprocessSpec

GEOD = Geod(ellps="WGS84")
ORIGIN = (46.52, 6.63)  # lat, lon


def _identity(dim=48, checkpoint="c" * 64):
    return ModelIdentity(checkpoint, "mean-nano", dim, PreprocessSpec(size=32))


def _unit_rows(rng, count, dim):
    rows = rng.standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


SOURCE = {"id": "grid", "sha256": "0" * 64}


def _grid_records(rows, cols, spacing_m, side_m):
    """Tile records for a rows x cols grid of centres `spacing_m` apart (geodesic offsets)."""
    tiles = []
    for r in range(rows):
        for c in range(cols):
            lon, lat, _ = GEOD.fwd(ORIGIN[1], ORIGIN[0], 90.0, c * spacing_m)
            lon, lat, _ = GEOD.fwd(lon, lat, 180.0, r * spacing_m)
            tile = dict(
                name=f"r{r}c{c}",
                scale=1.0,
                side_m=side_m,
                grid_row=r,
                grid_col=c,
                center_e=0.0,
                center_n=0.0,
                crs="EPSG:32632",
                center_lat=lat,
                center_lon=lon,
                gsd=1.0,
                north_up=1,
                valid_fraction=1.0,
                path="",
                source_id=SOURCE["id"],
                source_sha256=SOURCE["sha256"],
            )
            for corner in ("tl", "tr", "br", "bl"):
                tile[corner + "_lat"], tile[corner + "_lon"] = lat, lon
            tiles.append(tile)
    return records_from_rows(tiles, {(SOURCE["id"], SOURCE["sha256"]): 0})


GRID_ROWS, GRID_COLS = 30, 40
TARGET = 615  # row 15, col 15
NEIGHBOURS = [TARGET + dr * GRID_COLS + dc for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0)]


def _open_grid_bank(folder, embeddings):
    """A 30 x 40 grid bank (tiles 50 m apart, 90 m wide) written in two parts, then opened."""
    records = _grid_records(GRID_ROWS, GRID_COLS, 50.0, 90.0)
    write_bank(folder, [embeddings[:500], embeddings[500:]], records, [SOURCE], _identity(), {"type": "test"})
    return SatelliteBank.open(folder, device="cpu", block_rows=256)


@pytest.fixture(scope="module")
def grid_bank(tmp_path_factory):
    embeddings = _unit_rows(np.random.default_rng(7), GRID_ROWS * GRID_COLS, 48).astype(np.float16)
    return _open_grid_bank(tmp_path_factory.mktemp("grid_bank"), embeddings)


@pytest.fixture(scope="module")
def overlapping_bank(tmp_path_factory):
    """Like real overlapping tiles, the 8 neighbours of TARGET have embeddings close to its own."""
    rng = np.random.default_rng(8)
    embeddings = _unit_rows(rng, GRID_ROWS * GRID_COLS, 48)
    near = embeddings[TARGET] + 0.35 * _unit_rows(rng, len(NEIGHBOURS), 48)
    embeddings[NEIGHBOURS] = near / np.linalg.norm(near, axis=1, keepdims=True)
    return _open_grid_bank(tmp_path_factory.mktemp("overlapping_bank"), embeddings.astype(np.float16))


def _reference_scores(queries, embeddings):
    return queries.astype(np.float64) @ np.asarray(embeddings, dtype=np.float64).T


def _assert_exact(scores, indices, reference, allowed=None):
    """Returned scores are the k best (per the float64 reference) and belong to the returned rows."""
    k = scores.shape[1]
    for q in range(len(reference)):
        ref = reference[q] if allowed is None else reference[q][allowed]
        expected = np.sort(ref)[::-1][:k]
        np.testing.assert_allclose(scores[q, : len(expected)], expected, atol=1e-5)
        valid = indices[q] >= 0
        np.testing.assert_allclose(reference[q][indices[q][valid]], scores[q][valid], atol=1e-5)
        assert len(set(indices[q][valid].tolist())) == int(valid.sum())


@pytest.mark.parametrize("float32_in_memory", [False, True])
@pytest.mark.parametrize("block_rows", [64, 1000, 100000])
@pytest.mark.parametrize("k", [1, 5, 37])
def test_blocked_search_matches_brute_force(block_rows, k, float32_in_memory):
    rng = np.random.default_rng(block_rows + k)
    embeddings = _unit_rows(rng, 3001, 48).astype(np.float16)
    queries = _unit_rows(rng, 6, 48)
    searcher = ExactSearcher(
        embeddings, device="cpu", block_rows=block_rows, float32_in_memory=float32_in_memory
    )
    searcher.search(queries[::-1], k)  # the conversion buffer is reused between searches
    scores, indices = searcher.search(queries, k)
    assert scores.shape == (6, k) and scores.dtype == np.float32 and indices.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 0)
    _assert_exact(scores, indices, _reference_scores(queries, embeddings))


def test_equal_scores_are_ordered_by_row_and_a_single_query_vector_is_accepted():
    # One-hot rows score exactly 1.0 whatever the BLAS summation order, so these are true ties.
    embeddings = np.zeros((9, 16), dtype=np.float16)
    embeddings[:, 0] = 1.0
    embeddings[4, :2] = [0.6, 0.8]  # one row that is not a tie
    query = np.eye(16, dtype=np.float32)[0]
    scores, indices = ExactSearcher(embeddings, device="cpu", block_rows=4).search(query, 9)
    assert indices.tolist() == [[0, 1, 2, 3, 5, 6, 7, 8, 4]]
    assert scores[0, :8].tolist() == [1.0] * 8


def test_k_beyond_the_bank_pads_with_no_index():
    embeddings = _unit_rows(np.random.default_rng(1), 3, 8).astype(np.float16)
    scores, indices = ExactSearcher(embeddings, device="cpu").search(embeddings[:1].astype(np.float32), 5)
    assert sorted(indices[0, :3].tolist()) == [0, 1, 2] and indices[0, 3:].tolist() == [-1, -1]
    assert np.all(np.isneginf(scores[0, 3:]))


def test_bad_queries_are_one_line_errors():
    searcher = ExactSearcher(np.zeros((4, 8), dtype=np.float16), device="cpu")
    with pytest.raises(MeanlocError, match=r"\(N, 8\)"):
        searcher.search(np.zeros((2, 9), dtype=np.float32), 1)
    with pytest.raises(MeanlocError, match="NaN"):
        searcher.search(np.full((1, 8), np.nan, dtype=np.float32), 1)
    with pytest.raises(MeanlocError, match="k must be"):
        searcher.search(np.zeros((1, 8), dtype=np.float32), 0)


def test_bank_opens_memory_mapped_float16_with_identity(grid_bank):
    assert isinstance(grid_bank.embeddings, np.memmap)
    assert grid_bank.embeddings.dtype == np.float16 and grid_bank.embeddings.shape == (1200, 48)
    assert grid_bank.identity == _identity()
    assert isinstance(grid_bank.tiles.records, np.memmap)
    assert len(grid_bank.tiles) == 1200 and grid_bank.tiles.x.shape == (1200,)
    assert grid_bank.tiles.corners_latlon.shape == (1200, 4, 2)
    row = grid_bank.tiles.row(41)
    assert (row["id"], row["name"], row["grid_row"], row["grid_col"]) == (41, "r1c1", 1, 1)
    assert (row["source_id"], row["crs"]) == ("grid", "EPSG:32632")


def test_bank_refuses_another_model(grid_bank):
    with pytest.raises(ArtifactMismatchError, match="different model weights"):
        SatelliteBank.open(grid_bank.directory, expected_identity=_identity(checkpoint="d" * 64))
    with pytest.raises(ArtifactMismatchError, match="dimension"):
        SatelliteBank.open(grid_bank.directory, expected_identity=_identity(dim=64))
    other_size = ModelIdentity("c" * 64, "mean-nano", 48, PreprocessSpec(size=64))
    with pytest.raises(ArtifactMismatchError, match="preprocessing"):
        SatelliteBank.open(grid_bank.directory, expected_identity=other_size)
    SatelliteBank.open(grid_bank.directory, expected_identity=_identity())  # the right model opens


def _geodesic_distances(bank, lat, lon):
    _, _, dist = GEOD.inv(np.full(bank.count, lon), np.full(bank.count, lat), bank.tiles.lon, bank.tiles.lat)
    return dist


@pytest.mark.parametrize("radius", [60.0, 230.0, 700.0])
def test_window_keeps_exactly_the_tiles_within_radius(grid_bank, radius):
    lon, lat, _ = GEOD.fwd(ORIGIN[1], ORIGIN[0], 135.0, 600.0)  # somewhere inside the grid
    dist = _geodesic_distances(grid_bank, lat, lon)
    clear = np.abs(dist - radius) > 0.05  # ignore centres within 5 cm of the circle
    rows = grid_bank.window_rows(SearchWindow(radius, lat=lat, lon=lon))
    inside = np.zeros(grid_bank.count, dtype=bool)
    inside[rows] = True
    assert np.array_equal(inside[clear], (dist <= radius)[clear])
    assert inside.sum() > 0

    queries = _unit_rows(np.random.default_rng(11), 3, 48)
    scores, indices = grid_bank.search(queries, 4, window=SearchWindow(radius, lat=lat, lon=lon))
    assert set(indices[indices >= 0].tolist()) <= set(rows.tolist())
    _assert_exact(scores, indices, _reference_scores(queries, grid_bank.embeddings), allowed=rows)


def test_window_in_local_metres_and_an_empty_window(grid_bank):
    x, y = grid_bank.tiles.x[100], grid_bank.tiles.y[100]
    rows = grid_bank.window_rows(SearchWindow(1.0, x=x, y=y))
    assert rows.tolist() == [100]
    far_lat, far_lon = grid_bank.frame.to_latlon(1e5, 1e5)
    scores, indices = grid_bank.search(
        grid_bank.embeddings[:1].astype(np.float32), 3, window=SearchWindow(500.0, lat=far_lat, lon=far_lon)
    )
    assert indices.tolist() == [[-1, -1, -1]] and np.all(np.isneginf(scores))
    with pytest.raises(MeanlocError, match="either lat/lon or x/y"):
        SearchWindow(10.0, lat=1.0, lon=2.0, x=3.0, y=4.0)


def _reference_margin(bank, query, exclude_m):
    scores = _reference_scores(query[None], bank.embeddings)[0]
    top = int(np.argmax(scores))
    _, _, dist = GEOD.inv(
        np.full(bank.count, bank.tiles.lon[top]),
        np.full(bank.count, bank.tiles.lat[top]),
        bank.tiles.lon,
        bank.tiles.lat,
    )
    far = dist > exclude_m
    return top, scores[top] - scores[far].max(), int(np.flatnonzero(far)[np.argmax(scores[far])])


@pytest.mark.parametrize("k", [1, 10])
def test_margin_skips_overlapping_neighbours(overlapping_bank, k):
    bank = overlapping_bank
    query = np.asarray(bank.embeddings[TARGET], dtype=np.float32) + np.random.default_rng(k).normal(
        0, 0.02, 48
    )
    query /= np.linalg.norm(query)
    scores, indices = bank.search(query[None], k)
    margin = bank.margin(query, scores[0], indices[0])  # default exclusion: the tile side (90 m)
    top, expected_margin, expected_runner = _reference_margin(bank, query, 90.0)
    assert margin.top_index == top == TARGET
    assert margin.runner_up_index == expected_runner and expected_runner not in NEIGHBOURS
    assert margin.margin == pytest.approx(expected_margin, abs=1e-4)
    # The plain top-1/top-2 margin is small: the runner-up is an overlapping neighbour.
    plain_scores, plain_indices = bank.search(query[None], 2)
    assert plain_indices[0, 1] in NEIGHBOURS
    assert plain_scores[0, 0] - plain_scores[0, 1] < margin.margin / 2


def test_margin_inside_a_window_with_no_far_tile(grid_bank):
    x, y = grid_bank.tiles.x[TARGET], grid_bank.tiles.y[TARGET]
    window = SearchWindow(60.0, x=x, y=y)  # the target and its 4 direct neighbours only
    query = np.asarray(grid_bank.embeddings[TARGET], dtype=np.float32)
    scores, indices = grid_bank.search(query[None], 5, window=window)
    margin = grid_bank.margin(query, scores[0], indices[0], window=window)
    assert margin.runner_up_index == -1 and np.isneginf(margin.runner_up_score)
    narrow = grid_bank.margin(query, scores[0], indices[0], exclude_m=10.0, window=window)
    assert narrow.runner_up_index == int(indices[0, 1])


def test_local_frame_distances_and_round_trip():
    frame = LocalFrame(*ORIGIN)
    bearings = np.array([0.0, 33.0, 90.0, 200.0, 301.0])
    for distance in (100.0, 5000.0, 30000.0):
        lon, lat, _ = GEOD.fwd(np.full(5, ORIGIN[1]), np.full(5, ORIGIN[0]), bearings, np.full(5, distance))
        x, y = frame.to_xy(lat, lon)
        # A tangent plane distorts distances by ~(d/R)^2/4: a few ppm at 30 km.
        np.testing.assert_allclose(np.hypot(x, y), distance, rtol=2e-5)
        back_lat, back_lon = frame.to_latlon(x, y)
        np.testing.assert_allclose(back_lat, lat, atol=1e-9)
        np.testing.assert_allclose(back_lon, lon, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# The compressed index: sign codes scanned by Hamming distance, exact re-ranking

SCANS = ["numpy"] + (["faiss"] if faiss_or_none() is not None else [])


def _indexed_copy(bank, folder):
    shutil.copytree(str(bank.directory), str(folder))
    build_index(folder)
    return folder


@pytest.fixture(scope="module")
def indexed_grid(grid_bank, tmp_path_factory):
    return _indexed_copy(grid_bank, tmp_path_factory.mktemp("indexed") / "grid")


WIDE_DIM = 256  # sign codes need width: at 48-d a code has only 48 bits
LOOK_ALIKE = 100


@pytest.fixture(scope="module")
def wide_overlapping(tmp_path_factory):
    """The overlapping grid at 256-d, with its index: (exact bank, index folder)."""
    rng = np.random.default_rng(18)
    embeddings = _unit_rows(rng, GRID_ROWS * GRID_COLS, WIDE_DIM)
    near = embeddings[TARGET] + 0.35 * _unit_rows(rng, len(NEIGHBOURS), WIDE_DIM)
    embeddings[NEIGHBOURS] = near / np.linalg.norm(near, axis=1, keepdims=True)
    # A look-alike place far away: the ambiguity a margin exists to measure.
    alike = embeddings[TARGET] + 0.8 * _unit_rows(rng, 1, WIDE_DIM)[0]
    embeddings[LOOK_ALIKE] = alike / np.linalg.norm(alike)
    folder = tmp_path_factory.mktemp("wide") / "bank"
    records = _grid_records(GRID_ROWS, GRID_COLS, 50.0, 90.0)
    identity = _identity(dim=WIDE_DIM)
    write_bank(folder, [embeddings.astype(np.float16)], records, [SOURCE], identity, {"type": "test"})
    build_index(folder)
    return SatelliteBank.open(folder, engine="exact"), folder


def _near_row_queries(embeddings, rows, cosine, seed):
    """Unit queries at `cosine` from the given bank rows (the bench's noise model)."""
    rng = np.random.default_rng(seed)
    base = np.asarray(embeddings[rows], dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise -= np.sum(noise * base, axis=1, keepdims=True) * base
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return cosine * base + np.sqrt(1.0 - cosine**2) * noise


@pytest.mark.parametrize("scan", SCANS)
def test_index_with_every_row_reranked_is_the_exact_search(indexed_grid, grid_bank, scan):
    bank = SatelliteBank.open(indexed_grid, engine="index", scan=scan, rerank=grid_bank.count)
    assert bank.describe()["global_search"]["scan"] == scan
    queries = _unit_rows(np.random.default_rng(21), 6, 48)
    scores, indices = bank.search(queries, 9)
    exact_scores, exact_indices = grid_bank.search(queries, 9)
    assert np.array_equal(indices, exact_indices)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-6)


@pytest.mark.parametrize("scan", SCANS)
def test_index_narrows_to_few_candidates_and_keeps_the_exact_top1(wide_overlapping, scan):
    exact, folder = wide_overlapping
    bank = SatelliteBank.open(folder, engine="index", scan=scan, rerank=24)
    rows = np.arange(1, exact.count, 37)
    queries = _near_row_queries(exact.embeddings, rows, 0.5, seed=3)
    scores, indices = bank.search(queries, 10)
    exact_scores, exact_indices = exact.search(queries, 10)
    assert np.array_equal(exact_indices[:, 0], rows)  # the noise model keeps the source row on top
    assert np.array_equal(indices[:, 0], exact_indices[:, 0])
    np.testing.assert_allclose(scores[:, 0], exact_scores[:, 0], atol=1e-6)
    # Only 24 of 1200 rows were scored: the scores returned are the exact ones of their rows.
    reference = _reference_scores(queries, exact.embeddings)
    np.testing.assert_allclose(np.take_along_axis(reference, indices, axis=1), scores, atol=1e-5)
    assert len(bank._searcher.candidates(queries[0], 24)) == 24


@pytest.mark.parametrize("k", [1, 10])
def test_margin_through_the_index_matches_the_exact_margin(wide_overlapping, k):
    """The runner-up that matters resembles the query, so the index finds it; with k=1 it is not
    among the results and the margin searches again, through the index."""
    exact, folder = wide_overlapping
    bank = SatelliteBank.open(folder, engine="index", rerank=32)
    query = _near_row_queries(exact.embeddings, [TARGET], 0.9, seed=k)[0]
    scores, indices = bank.search(query[None], k)
    margin = bank.margin(query, scores[0], indices[0])
    exact_scores, exact_indices = exact.search(query[None], k)
    expected = exact.margin(query, exact_scores[0], exact_indices[0])
    assert margin.top_index == expected.top_index == TARGET
    assert margin.runner_up_index == expected.runner_up_index == LOOK_ALIKE
    assert margin.margin == pytest.approx(expected.margin, abs=1e-6)


@pytest.mark.parametrize("code_bytes", [6, 16, 96, 104])
def test_faiss_and_numpy_scans_give_the_same_distances(code_bytes):
    """96 bytes is a 768-d code: FAISS 1.7/1.8 (Jetson's) crash on it whole, so it goes in parts."""
    rng = np.random.default_rng(code_bytes)
    codes = rng.integers(0, 256, (300, code_bytes), dtype=np.uint8)
    embeddings = np.zeros((300, code_bytes * 8), dtype=np.float16)
    centre = np.zeros(code_bytes * 8, dtype=np.float32)
    code = rng.integers(0, 256, (1, code_bytes), dtype=np.uint8)
    expected = np.unpackbits(np.bitwise_xor(codes, code), axis=1).sum(axis=1)
    for scan in SCANS:
        searcher = IndexSearcher(embeddings, codes, centre, scan=scan)
        assert searcher.scan_engine == scan
        assert np.array_equal(searcher._scan.distances(code), expected), scan


@pytest.mark.parametrize("width", [3, 16])
def test_popcount_without_numpy_bitwise_count(monkeypatch, width):
    """JetPack's numpy 1.x has no np.bitwise_count: the SWAR (uint64) and table (uint8) counts."""
    rng = np.random.default_rng(width)
    codes = rng.integers(0, 256, (50, width), dtype=np.uint8)
    expected = np.unpackbits(codes, axis=1).sum(axis=1)
    words = codes.view(np.uint64) if width % 8 == 0 else codes
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert np.array_equal(_popcount_rows(words.copy()), expected)


def test_nearest_rows_takes_ties_in_row_order():
    rng = np.random.default_rng(2)
    distances = rng.integers(0, 6, 400).astype(np.int32)
    for count in (1, 37, 80, 399, 400, 500):
        order = np.lexsort((np.arange(400), distances))[:count]
        assert np.array_equal(nearest_rows(distances, count), np.sort(order))


def test_engine_auto_uses_the_index_from_a_size_on(indexed_grid, grid_bank, monkeypatch):
    assert SatelliteBank.open(indexed_grid).describe()["global_search"] == "exact"  # 1,200 tiles
    monkeypatch.setattr(bank_module, "INDEX_MIN_TILES", 1000)
    bank = SatelliteBank.open(indexed_grid)
    assert isinstance(bank._searcher, IndexSearcher) and bank.describe()["global_search"]["rerank"] == 256
    # Windowed searches stay exact.
    x, y = grid_bank.tiles.x[TARGET], grid_bank.tiles.y[TARGET]
    query = _unit_rows(np.random.default_rng(1), 1, 48)
    window = SearchWindow(230.0, x=x, y=y)
    assert np.array_equal(bank.search(query, 4, window=window)[1], grid_bank.search(query, 4, window=window)[1])
    with pytest.raises(MeanlocError, match="no search index"):
        SatelliteBank.open(grid_bank.directory, engine="index")


def test_verify_recomputes_the_index_and_open_refuses_a_stale_one(indexed_grid, tmp_path):
    folder = _indexed_copy(SatelliteBank.open(indexed_grid), tmp_path / "bank")
    assert verify_bank(folder) == []
    # Tamper with one code and re-hash it, as a careless tool would: the recomputation notices.
    codes = np.load(str(folder / CODES_FILE))
    codes[77, 0] ^= 1
    np.save(str(folder / CODES_FILE), codes)
    manifest = set_manifest_section(folder, "index", read_manifest(folder)["index"], INDEX_FILES)
    assert verify_bank(folder) == [f"{CODES_FILE} row 77 does not match the embeddings"]
    # An index of other embeddings is refused at open and reported by verify.
    manifest["index"]["embeddings_sha256"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactMismatchError, match="other embeddings"):
        SatelliteBank.open(folder, engine="index")
    assert verify_bank(folder) == ["the index was built from other embeddings than this bank's"]
    build_index(folder)
    assert verify_bank(folder) == []
    (folder / CODES_FILE).write_bytes(b"broken")
    assert any("sha256 differs" in p for p in verify_bank(folder))
    with pytest.raises(MeanlocError, match=r"damaged: index_codes\.npy"):  # the hash check at open sees it first
        SatelliteBank.open(folder, engine="index")
    with pytest.raises(ArtifactMismatchError, match="cannot read bank index"):  # and without hashes, the index
        SatelliteBank.open(folder, engine="index", check="fast")


def test_rebuilt_index_is_byte_identical(indexed_grid, tmp_path):
    folder = _indexed_copy(SatelliteBank.open(indexed_grid), tmp_path / "again")
    for name in INDEX_FILES:
        assert (folder / name).read_bytes() == (indexed_grid / name).read_bytes()


def test_unknown_engine_and_device_are_refused(grid_bank):
    with pytest.raises(MeanlocError, match="engine"):
        SatelliteBank.open(grid_bank.directory, engine="annoy")
    with pytest.raises(MeanlocError, match="device"):
        SatelliteBank.open(grid_bank.directory, device="tpu")


@pytest.mark.gpu
def test_cupy_search_matches_numpy(grid_bank):
    cupy = pytest.importorskip("cupy")
    queries = _unit_rows(np.random.default_rng(4), 5, 48)
    gpu = ExactSearcher(grid_bank.embeddings, device="cuda", block_rows=300)
    cpu = ExactSearcher(grid_bank.embeddings, device="cpu", block_rows=300)
    assert gpu.xp is cupy and gpu.device == "cuda"
    for rows in (None, np.arange(100, 900, 3)):
        gpu_scores, gpu_indices = gpu.search(queries, 7, rows=rows)
        cpu_scores, cpu_indices = cpu.search(queries, 7, rows=rows)
        np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-5)
        assert np.array_equal(gpu_indices, cpu_indices)


def test_blocked_topk_restricted_rows_match_a_subset_search():
    rng = np.random.default_rng(9)
    embeddings = _unit_rows(rng, 500, 16).astype(np.float16)
    rows = np.sort(rng.choice(500, 120, replace=False))
    queries = _unit_rows(rng, 2, 16)
    scores, indices = blocked_topk(np, queries, embeddings, 5, rows=rows, block_rows=50)
    sub_scores, sub_indices = blocked_topk(np, queries, embeddings[rows], 5, block_rows=1000)
    np.testing.assert_allclose(scores, sub_scores, atol=1e-6)
    assert np.array_equal(indices, rows[sub_indices])


def test_opening_and_searching_a_bank_imports_only_numpy(grid_bank):
    """On board, search must not pull torch (nor the build-time OpenCV/pyproj/tqdm/rasterio)."""
    code = (
        "import sys, numpy as np\n"
        "from meanloc.runtime.bank import SatelliteBank, SearchWindow\n"
        "import meanloc.runtime.bank_cli\n"
        f"bank = SatelliteBank.open({str(grid_bank.directory)!r})\n"
        "query = np.asarray(bank.embeddings[:1], dtype=np.float32)\n"
        "scores, indices = bank.search(query, 3, window=SearchWindow(500.0, x=0.0, y=0.0))\n"
        "top_scores, top_indices = bank.search(query, 5)\n"
        "bank.margin(query[0], top_scores[0], top_indices[0])\n"
        "heavy = ('torch', 'cv2', 'pyproj', 'rasterio', 'tqdm', 'onnxruntime')\n"
        "print(','.join(sorted(m for m in heavy if m in sys.modules)) or 'none')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "none"
