"""Containers that yield no image still get a row, shards are bounded, manifests fail early (issue 26).

Stage by stage (no Ray): every input kind (folder, glob, tar shard on disk and over HTTP, CSV manifest)
is run through the listing and the load stage, and its rows plus its counted entries are compared with
what was given; tar shards of every format (plain, gzip, bzip2, xz, Zstandard, none, zeros, a ZIP);
the shard size limit on disk, over HTTP and on S3 (moto); the checks of CSV and Parquet manifests before
any work. Then one job run on the shared test Ray cluster over all the container kinds at once.
Everything is real: files, tar archives, HTTP servers on 127.0.0.1, a moto S3 server.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import needs_golden
from hostile_hosts import ImageServer
from img2pose_core.output import NOT_WRITTEN, STATUSES
from img2pose_core.storage import StorageConfig
from jobs.inputs import InputError, ManifestPolicy, classify_input, list_prefix, resolve_manifest_entries, split_prefix, validate_inputs
from jobs.inputs.manifest_files import csv_convert_options
from jobs.inputs.shards import open_shard, tar_rows
from jobs.loading import LoadSettings, load_images
from jobs.reading import ReadFailure
from ray_fixtures import ray_head  # noqa: F401
from s3_fixtures import s3_client, s3_server  # noqa: F401

ZEROS_30MB = b"\0" * (30 << 20)


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 24, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _tar(entries: list[tuple[str, bytes | None]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar of ``(name, bytes)`` files and ``(name, None)`` folders."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def _rows(batch: dict, **settings) -> dict[str, tuple[str, str | None]]:
    """The load stage over a batch of source rows: ``{image_uri: (status, error)}``, one entry each."""
    load = LoadSettings(storage=StorageConfig(read_attempts=2), max_pixels=10_000_000, keep_bytes=False, **settings)
    out: dict[str, tuple[str, str | None]] = {}
    for block in load_images(batch, load):
        for uri, status, error in zip(block["image_uri"], block["status"], block["error"]):
            assert uri not in out, f"two rows for {uri}"
            out[uri] = (str(status), error)
    return out


def _batch(sources: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.array([s[k] for s in sources], dtype=object) for k in ("source_uri", "kind", "status", "error")}


def _load(uris: list[str], **settings) -> dict[str, tuple[str, str | None]]:
    return _rows(_batch([{"source_uri": u, "kind": "tar" if u.endswith(".tar") else "file", "status": "", "error": ""}
                         for u in uris]), **settings)  # fmt: skip


# --- every input kind: rows + counts = what was given --------------------------------------------------
CORPUS = {  # name: (bytes, {image_uri suffix: status}) -- what each file of the folder must become
    "a.jpg": (_jpeg(1), {"": "ok"}),
    "a.json": (b"{}", {"": "sidecar"}),
    "_SUCCESS": (b"", {"": "marker"}),
    "sub/b.jpg": (_jpeg(2), {"": "ok"}),
    "empty.tar": (_tar([]), {"": "empty_shard"}),
    "zeros.tar": (b"\0" * 4096, {"": "empty_shard"}),
    "nothing.tar": (b"", {"": "empty_shard"}),
    "folders.tar": (_tar([("d", None), ("d/e", None)]), {"": "empty_shard"}),
    "markers.tar": (_tar([("_SUCCESS", b""), ("x/_SUCCESS", b""), (".part-0.crc", b"")]),
                    {"": "empty_shard", "#_SUCCESS": "marker", "#x/_SUCCESS": "marker", "#.part-0.crc": "marker"}),
    "full.tar": (_tar([("c.jpg", _jpeg(3)), ("c.json", b"{}")]), {"#c.jpg": "ok", "#c.json": "sidecar"}),
    "zip.tar": (_zip("x.jpg", _jpeg(5)), {"": "not_a_tar"}),
    "picture.tar": (_jpeg(6), {"": "not_a_tar"}),
    "packed.tar": (gzip.compress(_tar([("g.jpg", _jpeg(7))])), {"#g.jpg": "ok"}),
}  # fmt: skip


def _write_corpus(root: Path) -> dict[str, str]:
    expected = {}
    for name, (data, rows) in CORPUS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
        expected |= {f"{root / name}{suffix}": status for suffix, status in rows.items()}
    return expected


def _sources_of(uri: str, storage: StorageConfig) -> list[dict]:
    """The source rows of one ``--input``, as the job lists it (manifests read with the job's CSV options)."""
    spec = classify_input(uri)
    if spec.kind == "manifest":
        table = pacsv.read_csv(spec.uri, convert_options=csv_convert_options(["url"]))
        batch = resolve_manifest_entries(table["url"].to_pylist(), spec.uri, ManifestPolicy())
        return [dict(zip(batch, values)) for values in zip(*batch.values())]
    rows, subdirs = split_prefix(spec, storage)
    for sub in subdirs:
        rows.extend(list_prefix(sub, storage))
    return rows


@pytest.fixture(scope="module")
def server():
    with ImageServer() as srv:
        srv.routes.update({"/zeros.tar": srv.body(ZEROS_30MB), "/packed.tar": srv.body(CORPUS["packed.tar"][0]),
                           "/h.jpg": srv.body(_jpeg(8))})  # fmt: skip
        yield srv


@pytest.mark.parametrize("kind", ["folder", "glob", "tar", "http_tar", "manifest"])
def test_every_input_has_a_row_or_a_count(kind, server, tmp_path):
    corpus = tmp_path / "corpus"
    expected_all = _write_corpus(corpus)
    given: dict[str, str]
    if kind == "folder":
        uris, given = [str(corpus)], expected_all
    elif kind == "glob":
        uris = [str(corpus / "*.tar")]
        given = {u: s for u, s in expected_all.items() if u.split("#")[0].endswith(".tar")}
    elif kind == "tar":
        uris = [str(corpus / n) for n in ("zeros.tar", "markers.tar", "packed.tar", "zip.tar")]
        given = {u: s for u, s in expected_all.items() if u.split("#")[0] in uris}
    elif kind == "http_tar":
        uris = [f"{server.url}/zeros.tar", f"{server.url}/packed.tar"]
        given = {uris[0]: "empty_shard", f"{uris[1]}#g.jpg": "ok"}
    else:
        lines = ["a.jpg", "", f"{server.url}/zeros.tar", f"{server.url}/h.jpg", "zip.tar", "/etc/passwd", f"{server.url}/gone.jpg"]
        (corpus / "list.csv").write_text("url,id\n" + "".join(f"{u},{i}\n" for i, u in enumerate(lines)), encoding="utf-8")
        uris = [str(corpus / "list.csv")]
        given = {f"{corpus}/a.jpg": "ok", "": "empty_url", f"{server.url}/zeros.tar": "empty_shard",
                 f"{server.url}/h.jpg": "ok", f"{corpus}/zip.tar": "not_a_tar", "/etc/passwd": "not_allowed",
                 f"{server.url}/gone.jpg": "unreadable"}  # fmt: skip
    validate_inputs(uris, StorageConfig().for_checks(), "url")
    sources = [row for uri in uris for row in _sources_of(uri, StorageConfig())]
    got = _rows(_batch(sources), read_timeout_s=60)
    if kind == "manifest":  # an empty cell's row is named by a random suffix
        got = {("" if "#empty-" in u else u): v for u, v in got.items()}
    statuses = {u: s for u, (s, _) in got.items()}
    rows = sum(1 for s in statuses.values() if s not in NOT_WRITTEN)
    counted = sum(1 for s in statuses.values() if s in NOT_WRITTEN)
    assert rows + counted == len(given), (kind, statuses)
    assert statuses == given, {u: (statuses.get(u), given.get(u)) for u in set(statuses) | set(given) if statuses.get(u) != given.get(u)}
    assert set(statuses.values()) <= set(STATUSES) | set(NOT_WRITTEN)
    if "markers.tar" in str(given):
        assert "markers, sidecars or copies, counted: 3" in got[f"{corpus}/markers.tar"][1]


def test_a_folder_or_glob_emptied_after_the_check_gets_one_row(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(_jpeg(1))
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "b.jpg").write_bytes(_jpeg(2))
    (tmp_path / "gone").mkdir()
    (tmp_path / "gone" / "c.jpg").write_bytes(_jpeg(3))
    uris = [str(tmp_path / "d"), str(tmp_path / "g" / "*.jpg"), str(tmp_path / "gone")]
    validate_inputs(uris, StorageConfig().for_checks(), "url")
    for name in ("d/a.jpg", "g/b.jpg", "gone/c.jpg"):
        (tmp_path / name).unlink()
    (tmp_path / "gone").rmdir()
    got = _rows(_batch([row for uri in uris for row in _sources_of(uri, StorageConfig())]))
    assert {u: s for u, (s, _) in got.items()} == {uris[0]: "empty_input", uris[1]: "empty_input", uris[2]: "empty_input"}
    assert "held files when the inputs were checked" in got[uris[0]][1] and "glob matches no file" in got[uris[1]][1]


# --- shard formats -------------------------------------------------------------------------------------
def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


@pytest.mark.parametrize(
    "name, make, status, words",
    [
        ("gnu", lambda t: _tar(t, tarfile.GNU_FORMAT), "ok", None),
        ("ustar", lambda t: _tar(t, tarfile.USTAR_FORMAT), "ok", None),
        ("gzip", lambda t: gzip.compress(_tar(t)), "ok", None),
        ("bzip2", lambda t: bz2.compress(_tar(t)), "ok", None),
        ("xz", lambda t: lzma.compress(_tar(t)), "ok", None),
        ("zstd", lambda t: _zstd(_tar(t)), "ok", None),
        ("gzip-of-zeros", lambda t: gzip.compress(b"\0" * (4 << 20)), "empty_shard", "gzip stream holds only zero bytes"),
        ("gzip-of-text", lambda t: gzip.compress(b"hello\n" * 100), "not_a_tar", "gzip stream is not a tar archive"),
        ("gzip-truncated", lambda t: gzip.compress(_tar(t))[:-20], "corrupt", "gzip stream is damaged"),
        ("bad-checksum", lambda t: _tar(t)[:148] + b"9999999\0" + _tar(t)[156:], "corrupt", "first tar header is damaged"),
        ("zeros-then-data", lambda t: b"\0" * 1024 + _tar(t), "corrupt", "end-of-archive block and holds other bytes"),
        ("zip", lambda t: _zip("a.jpg", _jpeg(1)), "not_a_tar", "a ZIP archive"),
        ("html", lambda t: b"<!DOCTYPE html><html>404</html>" * 40, "not_a_tar", "text or HTML"),
        ("short", lambda t: b"tar?", "not_a_tar", "shorter than one tar header"),
        ("random", lambda t: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not_a_tar", "no tar header"),
    ],
)  # fmt: skip
def test_the_shard_format_is_told_from_its_first_bytes(name, make, status, words, tmp_path):
    path = tmp_path / f"{name}.tar"
    path.write_bytes(make([("a.jpg", _jpeg(1))]))
    got = _load([str(path)])
    uri = f"{path}#a.jpg" if status == "ok" else str(path)
    assert got[uri][0] == status, got
    assert len(got) == 1 or (name == "gzip-truncated" and got[f"{path}#a.jpg"][0] == "corrupt"), got
    assert words is None or words in got[uri][1], got[uri]


def test_a_v7_tar_without_magic_is_still_a_tar(tmp_path):
    """Old tars have no ``ustar`` magic at offset 257: their header checksum is what makes them tars."""
    data = bytearray(_tar([("a.jpg", _jpeg(1))], tarfile.USTAR_FORMAT))
    data[257:265] = b"\0" * 8
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\0 " % sum(data[:512])
    (tmp_path / "v7.tar").write_bytes(bytes(data))
    assert _load([str(tmp_path / "v7.tar")]) == {f"{tmp_path}/v7.tar#a.jpg": ("ok", None)}


def test_a_30_mb_zero_filled_tar_over_http_gets_a_row(server):
    got = _load([f"{server.url}/zeros.tar"])
    assert got == {f"{server.url}/zeros.tar": ("empty_shard", "the shard holds only zero bytes (31457280: end-of-archive blocks): no member")}


# --- shard size and time ----------------------------------------------------------------------------------
def test_shards_above_max_shard_bytes_are_too_large_before_their_body_where_the_size_is_known(server, tmp_path):
    big = _tar([(f"{i}.jpg", _jpeg(i)) for i in range(40)])
    assert len(big) > 20_000
    (tmp_path / "big.tar").write_bytes(big)
    packed = gzip.compress(_tar([("z.jpg", b"\0" * (8 << 20))]))  # 8 KB that unpack to an 8 MiB member
    (tmp_path / "packed.tar").write_bytes(packed)
    assert len(packed) < 20_000
    server.routes["/big.tar"] = server.body(big)
    server.routes["/endless.tar"] = server.endless(seconds=20)
    uris = [str(tmp_path / "big.tar"), str(tmp_path / "packed.tar"), f"{server.url}/big.tar", f"{server.url}/endless.tar"]
    got = _load(uris, max_shard_bytes=20_000)
    assert {u: s for u, (s, _) in got.items()} == dict.fromkeys(uris, "too_large")
    assert f"the file is {len(big)} bytes, above the limit of 20000 (--max-shard-bytes)" == got[uris[0]][1]
    assert "the members of the gzip shard to read hold more than 20000 bytes (--max-shard-bytes)" == got[uris[1]][1]
    assert f"the server declares {len(big)} bytes" in got[uris[2]][1] and "(--max-shard-bytes)" in got[uris[2]][1]
    assert "the body exceeds the limit of 20000 bytes" in got[uris[3]][1] and "(--max-shard-bytes)" in got[uris[3]][1]
    # Under the limit, the same shards are read.
    assert sum(s == "ok" for s, _ in _load(uris[:1], max_shard_bytes=1 << 20).values()) == 40


def test_a_shard_on_s3_above_the_limit_is_refused_from_its_size(s3_server):  # noqa: F811
    client = s3_client(s3_server)
    client.create_bucket(Bucket="shards")
    client.put_object(Bucket="shards", Key="big.tar", Body=_tar([(f"{i}.jpg", _jpeg(i)) for i in range(40)]))
    client.put_object(Bucket="shards", Key="ok.tar", Body=_tar([("a.jpg", _jpeg(1))]))
    load = LoadSettings(storage=StorageConfig(s3_endpoint_url=s3_server, read_attempts=2), max_pixels=10_000_000,
                        keep_bytes=False, max_shard_bytes=20_000)  # fmt: skip
    batch = _batch([{"source_uri": f"s3://shards/{k}", "kind": "tar", "status": "", "error": ""} for k in ("big.tar", "ok.tar")])
    got = {u: (s, e) for block in load_images(batch, load) for u, s, e in zip(block["image_uri"], block["status"], block["error"])}
    assert got["s3://shards/big.tar"][0] == "too_large" and "the object is" in got["s3://shards/big.tar"][1]
    assert got["s3://shards/ok.tar#a.jpg"] == ("ok", None)


def test_a_gzip_bomb_member_costs_time_not_memory(tmp_path):
    """A gzip shard declaring a 256 MiB member of zeros (0.25 MB on disk) before a good one: the big member is
    skipped while streaming, never held, and the good one is read (Python's allocations peak under 32 MiB)."""
    import tracemalloc

    member, block = tarfile.TarInfo("000.jpg"), 64 << 20
    member.size = 4 * block
    good = _tar([("001.jpg", _jpeg(1))], tarfile.GNU_FORMAT)
    zeros = gzip.compress(b"\0" * block, compresslevel=9)
    (tmp_path / "bomb.tar").write_bytes(gzip.compress(member.tobuf(format=tarfile.GNU_FORMAT)) + zeros * 4 + gzip.compress(good))
    tracemalloc.start()
    try:
        got = _load([str(tmp_path / "bomb.tar")], max_shard_bytes=4 << 20)  # the 0.25 MB shard is read whole
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert {u: s for u, (s, _) in got.items()} == {f"{tmp_path}/bomb.tar#000.jpg": "too_large", f"{tmp_path}/bomb.tar#001.jpg": "ok"}
    assert peak < 32 << 20, f"Python's allocations peaked at {peak >> 20} MiB"


def test_listing_a_shard_stays_inside_the_read_timeout():
    """A deadline already passed (no clock is raced): a plain and a compressed shard are given up."""
    plain = _tar([("a.jpg", _jpeg(1)), ("b.jpg", _jpeg(2))])
    for data, words in ((plain, "the shard's entries were not listed"), (gzip.compress(plain), "the gzip shard was not read")):
        with pytest.raises(ReadFailure) as failure:
            open_shard(data, 1 << 20, 1 << 20, deadline=time.monotonic() - 1)
        assert failure.value.status == "unreadable" and f"timed out: {words} within --read-timeout" in failure.value.message
        shard = open_shard(data, 1 << 20, 1 << 20, deadline=time.monotonic() + 60)
        assert [(r["image_uri"], r["status"]) for r in tar_rows("s.tar", shard, 1 << 20)] == [("s.tar#a.jpg", "pending"), ("s.tar#b.jpg", "pending")]


def test_max_shard_bytes_flag(tmp_path):
    from jobs.annotate import parse_args
    from jobs.config import JobConfig

    base = ["--input", str(tmp_path), "--output", str(tmp_path / "o")]
    assert parse_args(base).max_shard_bytes == JobConfig.max_shard_bytes == LoadSettings.max_shard_bytes == 1 << 30
    for text, value in (("512M", 512 << 20), ("2GiB", 2 << 30), ("1000", 1000), ("64kb", 64 << 10)):
        config = JobConfig.from_args(parse_args([*base, "--max-shard-bytes", text]))
        assert config.max_shard_bytes == value, text
    for text in ("0", "-5", "1.5G", "lots", "G"):
        with pytest.raises(SystemExit):
            parse_args([*base, "--max-shard-bytes", text])


# --- manifests: fail before any work, naming the file and the line -----------------------------------
def _check(path: Path, **kw) -> str:
    with pytest.raises(InputError) as exc:
        validate_inputs([str(path)], StorageConfig().for_checks(), "url", **kw)
    return str(exc.value)


def test_a_csv_manifest_that_is_not_utf8_fails_early_naming_the_line(tmp_path):
    latin = tmp_path / "latin.csv"
    latin.write_bytes("url,caption\na.jpg,fine\nb.jpg,café\n".encode("latin-1"))
    message = _check(latin)
    assert message.startswith(f"--input {latin}: line 3 is not UTF-8: byte 10 of the line is 0xE9"), message
    assert "Latin-1" in message
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("url\na.jpg\n".encode("utf-16"))
    assert "UTF-16 (byte order mark FF FE)" in _check(utf16)
    cut = tmp_path / "cut.csv"
    cut.write_bytes("url\na.jpg\nb\u00e9".encode()[:-1])
    assert "line 3 is not UTF-8: byte 2 of the line is 0xC3 (unexpected end of data)" in _check(cut)
    # Past the first chunk (8 MiB) the line is still right, and a character cut by the chunk edge is fine.
    long = tmp_path / "long.csv"
    body = b"url\n" + b"a.jpg\n" * 1_300_000
    edge = (8 << 20) + 4 - len(body) - 1
    body += b"x" * edge + "\u00e9.jpg\n".encode() + b"b.jpg\n" * 10 + b"bad\xff.jpg\n"
    long.write_bytes(body)
    assert edge > 0
    assert f"line {1_300_000 + 1 + 1 + 10 + 1} is not UTF-8: byte 4 of the line is 0xFF" in _check(long)
    # With a byte order mark, UTF-8 is fine.
    bom = tmp_path / "bom.csv"
    bom.write_bytes("url,caption\na.jpg,café\n".encode("utf-8-sig"))
    assert validate_inputs([str(bom)], StorageConfig().for_checks(), "url")[0].kind == "manifest"


def test_a_csv_manifest_that_the_job_could_not_parse_or_that_is_empty_fails_early(tmp_path):
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("url,caption\na.jpg,one\nb.jpg,two,three\n")
    assert "cannot be read as CSV (CSV parse error: Expected 2 columns, got 3: b.jpg,two,three)" in _check(ragged)
    header = tmp_path / "header.csv"
    header.write_text("url,caption\n")
    assert "the manifest holds no rows, only its header" in _check(header)
    nothing = tmp_path / "nothing.csv"
    nothing.write_bytes(b"")
    assert "manifest has no column 'url' (columns: none)" in _check(nothing)
    good = tmp_path / "good.csv"
    good.write_text("url,caption\na.jpg,one\n")
    assert "no column 'id' of --keep-columns" in _check(good, keep_columns=["id"])


@pytest.mark.parametrize(
    "column, ok",
    [
        (pa.array(["a.jpg"], pa.string()), True),
        (pa.array(["a.jpg"], pa.large_string()), True),
        (pa.array(["a.jpg"]).dictionary_encode(), True),
        (pa.array([b"http://127.0.0.1/ok.jpg"], pa.binary()), False),
        (pa.array([["a.jpg"]], pa.list_(pa.string())), False),
        (pa.array([7], pa.int64()), False),
        (pa.array([1.5], pa.float64()), False),
        (pa.array([None], pa.null()), False),
    ],
)  # fmt: skip
def test_the_url_column_of_a_parquet_manifest_must_hold_text(column, ok, tmp_path):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"url": column, "id": [1]}), path)
    if ok:
        assert validate_inputs([str(path)], StorageConfig().for_checks(), "url")[0].kind == "manifest"
        return
    message = _check(path)
    stored = pq.read_schema(path).field("url").type  # as Parquet gives it back (list items are "element")
    assert f"column 'url' (--url-column) has type {stored}, not text" in message, message


def test_a_parquet_manifest_without_rows_or_that_is_no_parquet_fails_early(tmp_path):
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"url": pa.array([], pa.string())}), empty)
    assert "the manifest holds no rows" in _check(empty)
    fake = tmp_path / "fake.parquet"
    fake.write_text("url\na.jpg\n")
    assert "not a readable Parquet file" in _check(fake)


# --- the job -----------------------------------------------------------------------------------------
@needs_golden
def test_the_job_gives_every_container_a_row(ray_head, golden_bundle, server, tmp_path):  # noqa: F811
    """One run over a folder of every container kind, a glob, a 30 MB zero-filled tar over HTTP and a
    manifest: rows + counts equal what was given, the job exits 0; a latin-1 manifest and a binary URL
    column stop the job with exit 2 before Ray is reached."""
    from test_annotate import _job, _read_tables

    corpus, other, lists, out = tmp_path / "corpus", tmp_path / "other", tmp_path / "lists", tmp_path / "out"
    expected = _write_corpus(corpus)
    other.mkdir()
    (other / "o.jpg").write_bytes(_jpeg(9))
    expected[str(other / "o.jpg")] = "ok"
    lists.mkdir()
    (lists / "m.csv").write_text(f"url,id\n{server.url}/packed.tar,1\n{server.url}/h.jpg,2\n,3\n")  # an empty cell
    expected |= {f"{server.url}/packed.tar#g.jpg": "ok", f"{server.url}/h.jpg": "ok", f"{server.url}/zeros.tar": "empty_shard"}
    with open(other / "big.tar", "wb") as f:  # sparse: 41 MiB of zeros, above --max-shard-bytes 40M
        f.truncate(41 << 20)
    expected[str(other / "big.tar")] = "too_large"
    args = ["--input", str(corpus), "--input", str(other / "*.jpg"), "--input", f"{server.url}/zeros.tar",
            "--input", str(other / "big.tar"), "--max-shard-bytes", "40M",
            "--input", str(lists / "m.csv"), "--output", str(out), "--bundle", str(golden_bundle), "--run-id", "containers",
            "--min-size", "32", "--max-size", "64", "--threshold", "0.5"]  # fmt: skip
    env = dict(ray_head.env, IMG2POSE_CACHE=str(tmp_path / "cache"))
    started = time.monotonic()
    proc = _job(args, env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    _, images = _read_tables(str(out))
    got = dict(zip(images["image_uri"].to_pylist(), images["status"].to_pylist()))
    manifest = json.loads((out / "runs" / "containers.json").read_text())
    print(f"\ncontainers run: {time.monotonic() - started:.1f} s wall, {manifest['pipeline_s']:.1f} s pipeline")
    counted = {reason: entry["count"] for reason, entry in manifest["counts"]["not_written"].items()}
    rows_expected = {u: s for u, s in expected.items() if s not in NOT_WRITTEN}
    assert got == rows_expected, {u: (got.get(u), rows_expected.get(u)) for u in set(got) | set(rows_expected) if got.get(u) != rows_expected.get(u)}
    counts_expected = Counter(s for s in expected.values() if s in NOT_WRITTEN) + Counter({"empty_url": 1})
    assert counted == dict(counts_expected), manifest["counts"]["not_written"]
    assert images.num_rows + sum(counted.values()) == len(expected) + 1  # + the empty cell

    env_no_ray = dict(os.environ, RAY_ADDRESS="127.0.0.1:1")  # any attempt to reach Ray would fail loudly
    (lists / "latin.csv").write_bytes("url\nä.jpg\n".encode("latin-1"))
    pq.write_table(pa.table({"url": pa.array([f"{server.url}/h.jpg".encode()], pa.binary())}), lists / "bin.parquet")
    for name, words in (("latin.csv", "line 2 is not UTF-8"), ("bin.parquet", "has type binary, not text")):
        proc = _job(["--input", str(lists / name), "--output", str(tmp_path / "o2"), "--bundle", str(golden_bundle)],
                    env_no_ray, timeout=120)  # fmt: skip
        assert proc.returncode == 2 and f"--input {lists / name}: " in proc.stderr and words in proc.stderr, proc.stderr[-2000:]
