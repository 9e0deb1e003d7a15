"""Hostile inputs and stale state, stage by stage (no Ray): reading, listing, manifests, tar shards,
redaction, the shipped-bundle cache and the decoder's formats. The whole job over the same cases is in
tests/test_hostile_job.py; docs/reliability.md lists each guarantee with its test.

Everything is real: files, named pipes, sockets and links on this machine's disk, HTTP servers and
silent hosts on 127.0.0.1, names that do not resolve.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from hostile_hosts import UNRESOLVABLE_HOST, ImageServer, SilentHost, refused_url
from img2pose_core.imageio import ImageDecodeError, decode_image
from img2pose_core.uris import redact_text, redact_uri
from jobs.inputs import (
    ManifestPolicy,
    classify_directory,
    classify_input,
    expand_groups,
    with_choice,
    list_prefix,
    resolve_manifest_entry,
    validate_inputs,
    InputError,
)
from jobs.reading import ReadFailure, ReadLimits, read_concurrently, read_source
from jobs.loading import LoadSettings, load_images
from img2pose_core.storage import StorageConfig, is_transient


def _jpeg(seed: int, size: tuple[int, int] = (24, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _load(sources: list[tuple[str, str]], **settings) -> dict[str, tuple[str, str | None]]:
    """Run the load stage over ``(uri, kind)`` sources; ``{image_uri: (status, error)}`` (one row each)."""
    batch = {
        "source_uri": np.array([u for u, _ in sources], dtype=object),
        "kind": np.array([k for _, k in sources], dtype=object),
        "status": np.array([""] * len(sources), dtype=object),
        "error": np.array([""] * len(sources), dtype=object),
    }
    load = LoadSettings(storage=StorageConfig(), max_pixels=10_000_000, keep_bytes=False, **settings)
    rows: dict[str, tuple[str, str | None]] = {}
    for out in load_images(batch, load):
        for uri, status, error in zip(out["image_uri"], out["status"], out["error"]):
            assert uri not in rows, f"two rows for {uri}"
            rows[uri] = (status, error)
    return rows


# --- redaction -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "uri, secret, kept",
    [
        ("https://alice:hunter2@img.example.com/a/b.jpg", "hunter2", "@img.example.com/a/b.jpg"),
        ("s3://AKIAEXAMPLE:wJalrXUtnFEMIK7MDENG@bucket/key.jpg", "wJalrXUtnFEMIK7MDENG", "@bucket/key.jpg"),
        ("https://b.s3.amazonaws.com/k.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20261130"
         "&X-Amz-Date=20261130T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&X-Amz-Security-Token=FwoGZX"
         "&X-Amz-Signature=deadbeefcafe", "deadbeefcafe", "X-Amz-Algorithm=AWS4-HMAC-SHA256"),
        ("https://storage.googleapis.com/b/o.jpg?X-Goog-Signature=0123abcd&X-Goog-Credential=sa%40p", "0123abcd", "/b/o.jpg"),
        ("https://acct.blob.core.windows.net/c/p.jpg?sv=2024-01-01&sig=AbCdEf%3D", "AbCdEf", "sv=2024-01-01"),
        ("https://api.example.com/img?id=7&token=s3cr3t-t0ken", "s3cr3t-t0ken", "id=7"),
        ("simplecache::https://u:pw-in-chain@h/x.jpg", "pw-in-chain", "simplecache::https://"),
    ],
)  # fmt: skip
def test_redaction_removes_the_secret_and_keeps_the_object(uri, secret, kept):
    shown = redact_uri(uri)
    assert secret not in shown and kept in shown and "REDACTED" in shown
    assert redact_uri(uri) == shown  # stable: the same input is the same row on every run
    assert secret not in redact_text(f"GET {uri} failed: boom")


def test_redaction_keeps_distinct_inputs_distinct_and_re_signed_urls_equal():
    a = redact_uri("https://api.example.com/img?token=one")
    b = redact_uri("https://api.example.com/img?token=two")
    assert a != b  # a token may select the image: two rows stay two
    signed = "https://b.s3.amazonaws.com/k.jpg?X-Amz-Date={d}&X-Amz-Signature={s}"
    assert redact_uri(signed.format(d="20261130T000000Z", s="aa")) == redact_uri(signed.format(d="20261201T000000Z", s="bb"))
    assert redact_uri("/data/plain path.jpg") == "/data/plain path.jpg"
    assert redact_uri("s3://bucket/key.jpg?versionId=3") == "s3://bucket/key.jpg?versionId=3"


# --- retry classification ------------------------------------------------------------------------
def test_dns_failures_and_refused_connections_are_not_retried():
    try:
        socket.getaddrinfo(UNRESOLVABLE_HOST, 80)
    except socket.gaierror as exc:
        assert not is_transient(exc)
    with pytest.raises(ConnectionRefusedError) as refused:
        socket.create_connection(("127.0.0.1", int(refused_url().rsplit(":", 1)[1].split("/")[0])), timeout=2)
    assert not is_transient(refused.value)
    for code, transient in ((429, True), (500, True), (502, True), (503, True), (504, True), (400, False),
                            (401, False), (403, False), (501, False)):  # fmt: skip
        error = OSError(f"HTTP {code}")
        error.status = code
        assert is_transient(error) is transient, code
    assert is_transient(ConnectionResetError("reset by peer"))
    assert is_transient(TimeoutError("timed out"))


# --- reading -------------------------------------------------------------------------------------
def test_only_regular_local_files_are_read(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    sock_path = tmp_path / "sock.jpg"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "big.jpg").write_bytes(b"\xff\xd8\xff" + b"\0" * 2000)
    limits = ReadLimits(timeout_s=5, max_bytes=1000)
    started = time.monotonic()
    cases = {
        str(fifo): ("not_a_file", "named pipe"),
        str(sock_path): ("not_a_file", "socket"),
        "/dev/zero": ("not_a_file", "device"),
        str(tmp_path): ("not_a_file", "folder"),
        str(tmp_path / "dangling.jpg"): ("unreadable", "symbolic link"),
        str(tmp_path / "missing.jpg"): ("unreadable", "no such file"),
        str(tmp_path / "big.jpg"): ("too_large", "above the limit of 1000"),
    }
    for path, (status, words) in cases.items():
        with pytest.raises(ReadFailure) as failure:
            read_source(path, StorageConfig(), limits)
        assert failure.value.status == status and words in failure.value.message, (path, failure.value.message)
    assert time.monotonic() - started < 5, "a special file made a read wait"
    server.close()


def test_files_inside_the_output_are_not_read_even_through_a_link(tmp_path):
    out = tmp_path / "out"
    (out / "crops").mkdir(parents=True)
    (out / "crops" / "0.jpg").write_bytes(_jpeg(1))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "innocent.jpg").symlink_to(out / "crops" / "0.jpg")
    with pytest.raises(ReadFailure) as failure:
        read_source(str(tmp_path / "in" / "innocent.jpg"), StorageConfig(), ReadLimits(output_root=str(out)))
    assert failure.value.status == "not_allowed"
    assert read_source(str(tmp_path / "in" / "innocent.jpg"), StorageConfig(), ReadLimits()) == _jpeg(1)


def test_http_reads_retry_what_can_succeed_and_stop_at_what_cannot(tmp_path):
    image = _jpeg(2)
    storage = StorageConfig(read_attempts=4)
    with ImageServer() as server, SilentHost() as silent:
        server.routes.update({
            "/ok.jpg": server.body(image),
            "/flaky.jpg": server.flaky(image, failures=2, code=503),
            "/throttled.jpg": server.flaky(image, failures=1, code=429),
            "/gone.jpg": server.status(404),
            "/forbidden.jpg": server.status(403),
            "/broken.jpg": server.status(500),
            "/to-metadata.jpg": server.redirect("http://169.254.169.254/latest/meta-data/iam/"),
            "/to-file.jpg": server.redirect("file:///etc/passwd"),
            "/loop.jpg": server.redirect("/loop.jpg"),
            "/hop.jpg": server.redirect("/ok.jpg"),
            "/endless.jpg": server.endless(seconds=20),
        })  # fmt: skip
        assert read_source(server.url + "/ok.jpg", storage, ReadLimits()) == image
        assert read_source(server.url + "/flaky.jpg", storage, ReadLimits()) == image
        assert read_source(server.url + "/throttled.jpg", storage, ReadLimits()) == image
        assert read_source(server.url + "/hop.jpg", storage, ReadLimits()) == image
        assert server.hits["/flaky.jpg"] == 3 and server.hits["/throttled.jpg"] == 2
        expected = {
            "/gone.jpg": ("unreadable", "not found", 1),
            "/forbidden.jpg": ("unreadable", "403", 1),
            "/broken.jpg": ("unreadable", "500", 4),  # retried to the attempt budget, then given up
            "/to-metadata.jpg": ("not_allowed", "metadata service", 1),
            "/to-file.jpg": ("not_allowed", "redirected to a file location", 1),
            "/loop.jpg": ("unreadable", "redirects", 6),
            "/endless.jpg": ("too_large", "exceeds the limit", 1),
        }
        for path, (status, words, hits) in expected.items():
            with pytest.raises(ReadFailure) as failure:
                read_source(server.url + path, storage, ReadLimits(timeout_s=30, max_bytes=1 << 20))
            assert failure.value.status == status and words in failure.value.message, (path, failure.value.message)
            assert server.hits[path] == hits, (path, server.hits[path])

        # Dead hosts cost no retries: refused and unresolvable fail at once.
        for url, words in ((refused_url(), "refused"), (f"http://{UNRESOLVABLE_HOST}/x.jpg", "does not resolve")):
            started = time.monotonic()
            with pytest.raises(ReadFailure) as failure:
                read_source(url, storage, ReadLimits(timeout_s=60))
            assert failure.value.status == "unreadable" and words in failure.value.message
            assert time.monotonic() - started < 3, f"{url} was retried as if transient"
        # A host that accepts and never answers costs the read timeout, not minutes per attempt.
        started = time.monotonic()
        with pytest.raises(ReadFailure) as failure:
            read_source(silent.url(), StorageConfig(idle_timeout_s=1.0), ReadLimits(timeout_s=3))
        assert time.monotonic() - started < 6
        assert failure.value.status == "unreadable"


def test_a_stalled_source_holds_up_nothing_else():
    arrived: list[tuple[float, int]] = []
    release = threading.Event()

    def read(uri: str) -> bytes:
        if uri == "stall":
            release.wait(30)
            return b"late"
        time.sleep(0.05)
        return uri.encode()

    items = [(0, "stall", "file")] + [(i, f"u{i}", "file") for i in range(1, 20)]
    started = time.monotonic()
    results = {}
    for index, data, failure in read_concurrently(items, read, timeout_s=1.5, parallel=4):
        arrived.append((time.monotonic() - started, index))
        results[index] = (data, failure)
    release.set()
    assert set(results) == set(range(20))
    assert results[0][0] is None and "timed out" in results[0][1].message
    good_times = [t for t, i in arrived if i != 0]
    assert max(good_times) < 1.0, "the other sources waited for the stalled one"
    assert 1.4 < arrived[-1][0] < 3.0 and arrived[-1][1] == 0


def test_thousand_row_manifest_with_dead_hosts_takes_at_most_twice_as_long(tmp_path):
    """The load stage over 1,000 HTTP rows, 20 of them dead hosts (refused or unresolvable), against the
    same manifest without them. The images come from Python's HTTP server in a process of its own."""
    import subprocess
    import sys

    folder = tmp_path / "www"
    folder.mkdir()
    for i in range(980):
        (folder / f"{i}.jpg").write_bytes(_jpeg(i, (32, 24)))
    port = int(refused_url().rsplit(":", 1)[1].split("/")[0])
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                read_source(f"{base}/0.jpg", StorageConfig(), ReadLimits(timeout_s=2))
                break
            except ReadFailure:
                time.sleep(0.1)
        clean = [(f"{base}/{i}.jpg", "file") for i in range(980)]
        dead = [(refused_url(f"/d{i}.jpg"), "file") for i in range(10)]
        dead += [(f"http://{UNRESOLVABLE_HOST}/d{i}.jpg", "file") for i in range(10)]

        def run(sources):
            started = time.monotonic()
            rows = {}
            for i in range(0, len(sources), 16):  # --sources-per-task 16, one task after another
                rows.update(_load(sources[i : i + 16], read_timeout_s=60))
            return time.monotonic() - started, rows

        t_clean, rows_clean = run(clean)
        mixed = clean + dead
        mixed = [mixed[i] for i in np.random.default_rng(5).permutation(len(mixed))]
        t_dead, rows_dead = run(mixed)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert len(rows_clean) == 980 and {s for s, _ in rows_clean.values()} == {"ok"}
    assert len(rows_dead) == 1000
    assert sum(1 for s, _ in rows_dead.values() if s == "unreadable") == 20
    print(f"\n1,000 rows: {t_clean:.2f} s clean (980 rows), {t_dead:.2f} s with 20 dead hosts")
    assert t_dead <= 2 * t_clean + 1.0, (t_clean, t_dead)


# --- listings ------------------------------------------------------------------------------------
def test_every_file_in_a_folder_is_an_input_or_counted(tmp_path):
    names = {
        "_DSC0001.JPG": ("file", ""), ".hidden.jpg": ("file", ""), "notes.txt": ("file", ""), "photo.avif": ("file", ""),
        "x.jpg": ("file", ""), "x.json": ("row", "sidecar"), "x.txt": ("row", "sidecar"),
        "shard-000.tar": ("tar", ""), "shard-000.json": ("row", "sidecar"), "shard-000.parquet": ("row", "sidecar"),
        "shard-000_stats.json": ("row", "sidecar"), "orphan.json": ("file", ""),
        "_SUCCESS": ("row", "marker"), "_committed_123": ("row", "marker"), ".part-0.crc": ("row", "marker"),
        "fifo.jpg": ("row", "not_a_file"), "linkdir": ("row", "not_a_file"), "link.jpg": ("file", ""),
    }  # fmt: skip
    folder = tmp_path / "d"
    (folder / "sub").mkdir(parents=True)
    for name in names:
        if name == "fifo.jpg":
            os.mkfifo(folder / name)
        elif name == "linkdir":
            (folder / name).symlink_to(folder / "sub")
        elif name == "link.jpg":
            (folder / name).symlink_to(folder / "x.jpg")
        else:
            (folder / name).write_bytes(b"data")
    (folder / "sub" / "deep.png").write_bytes(b"data")
    rows = {Path(r["source_uri"]).name: (r["kind"], r["status"]) for r in list_prefix(str(folder), StorageConfig())}
    assert rows == {**names, "deep.png": ("file", "")}


def test_tar_members_each_get_a_row_or_a_count():
    def add(tar, name, data=b"", **kind):
        info = tarfile.TarInfo(name)
        for key, value in kind.items():
            setattr(info, key, value)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add(tar, "a.jpg", _jpeg(1))
        add(tar, "a.json", b"{}")
        add(tar, "dup.jpg", _jpeg(2))
        add(tar, "dup.jpg", _jpeg(3))  # the later entry of a name wins, as extraction would leave it
        add(tar, "pic.avif", b"not really avif")  # an unknown extension is offered to the decoder
        add(tar, "link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        add(tar, "hard.jpg", type=tarfile.LNKTYPE, linkname="a.jpg")
        add(tar, "fifo.jpg", type=tarfile.FIFOTYPE)
        add(tar, "dev.jpg", type=tarfile.CHRTYPE)
        add(tar, "folder", type=tarfile.DIRTYPE)
    shard = "/data/s.tar"
    from jobs.inputs.shards import open_shard, tar_rows

    opened = open_shard(buf.getvalue(), 1 << 20, 1 << 20, time.monotonic() + 60)
    rows = [(r["image_uri"].split("#", 1)[1], r["status"], r["data"]) for r in tar_rows(shard, opened, 1 << 20)]
    statuses = {}
    for name, status, data in rows:
        statuses.setdefault(name, []).append(status)
    assert statuses == {
        "a.jpg": ["pending"], "a.json": ["sidecar"], "dup.jpg": ["duplicate", "pending"], "pic.avif": ["pending"],
        "link.jpg": ["not_a_file"], "hard.jpg": ["not_a_file"], "fifo.jpg": ["not_a_file"], "dev.jpg": ["not_a_file"],
    }  # fmt: skip
    assert [d for n, s, d in rows if n == "dup.jpg" and s == "pending"] == [_jpeg(3)]


# --- inputs and manifests ------------------------------------------------------------------------
def test_overlapping_inputs_are_refused_before_any_work(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jpg").write_bytes(_jpeg(1))
    (tmp_path / "link").symlink_to(tmp_path / "d")
    storage = StorageConfig().for_checks()
    for inputs, words in (
        ([str(tmp_path / "d"), str(tmp_path / "d" / "*.jpg")], "inside --input"),
        ([str(tmp_path / "d"), str(tmp_path / "d" / "a.jpg")], "inside --input"),
        ([str(tmp_path / "d"), str(tmp_path / "link")], "inside --input"),  # the same folder through a link
        ([str(tmp_path / "d"), str(tmp_path / "d") + "/"], "given twice"),
    ):
        with pytest.raises(InputError, match=words):
            validate_inputs(inputs, storage, "url")


def test_credentials_in_an_input_never_reach_the_message():
    with pytest.raises(InputError) as exc:
        validate_inputs(["https://alice:hunter2@127.0.0.1:9/photos/"], StorageConfig().for_checks(), "url")
    assert "hunter2" not in str(exc.value) and "REDACTED" in str(exc.value)


@pytest.mark.parametrize(
    "manifest, cell, allow, status, uri",
    [
        ("/m/list.csv", "a.jpg", False, "", "/m/a.jpg"),
        ("/m/list.csv", "sub/../b.jpg", False, "", "/m/b.jpg"),
        ("/m/list.csv", "../etc/passwd", False, "not_allowed", "/etc/passwd"),
        ("/m/list.csv", "../etc/passwd", True, "", "/etc/passwd"),
        ("/m/list.csv", "/etc/shadow", False, "not_allowed", "/etc/shadow"),
        ("/m/list.csv", "file:///etc/shadow", False, "not_allowed", "/etc/shadow"),
        ("/m/list.csv", "file:///etc/shadow", True, "", "/etc/shadow"),
        ("s3://b/lists/m.parquet", "x/1.jpg", False, "", "s3://b/lists/x/1.jpg"),
        ("s3://b/lists/m.parquet", "../secret/1.jpg", False, "not_allowed", "s3://b/secret/1.jpg"),
        ("s3://b/lists/m.parquet", "/etc/hosts", False, "not_allowed", "/etc/hosts"),
        ("s3://b/lists/m.parquet", "s3://other/1.jpg", False, "", "s3://other/1.jpg"),
        ("s3://b/lists/m.parquet", "ftp://h/1.jpg", False, "not_allowed", "ftp://h/1.jpg"),
        ("s3://b/lists/m.parquet", "memory://x/1.jpg", True, "not_allowed", "memory://x/1.jpg"),
        ("s3://b/lists/m.parquet", "zip://a.jpg::s3://b/z.zip", True, "not_allowed", "zip://a.jpg::s3://b/z.zip"),
        ("s3://b/lists/m.parquet", "http://169.254.169.254/latest/", False, "not_allowed", "http://169.254.169.254/latest/"),
        ("s3://b/lists/m.parquet", "http://[fd00:ec2::254]/latest/", False, "not_allowed", "http://[fd00:ec2::254]/latest/"),
        ("s3://b/lists/m.parquet", "http://metadata.google.internal/x", False, "not_allowed", "http://metadata.google.internal/x"),
        ("s3://b/lists/m.parquet", "  https://h/p.jpg ", False, "", "https://h/p.jpg"),
    ],
)  # fmt: skip
def test_manifest_rows_name_only_what_the_operator_allowed(manifest, cell, allow, status, uri):
    row = resolve_manifest_entry(cell, manifest, ManifestPolicy(allow_local_files=allow))
    assert (row["status"], row["source_uri"]) == (status, uri)
    assert row["kind"] == ("row" if status else "file")


def test_empty_manifest_cells_are_counted_not_read():
    rows = [resolve_manifest_entry(v, "/m/list.csv", ManifestPolicy()) for v in ("", "  ", None)]
    assert [r["status"] for r in rows] == ["empty_url"] * 3
    assert len({r["source_uri"] for r in rows}) == 3  # each counted, none merged as a duplicate


def test_grouped_sources_keep_one_row_read_if_any_copy_may_be_read_and_count_the_copies():
    sources = pa.table({
        "source_uri": ["a", "a", "a", "b", "c", "c"],
        "kind": ["row", "file", "file", "tar", "row", "row"],
        "status": ["not_allowed", "", "", "", "not_allowed", "not_allowed"],
        "error": ["refused", "", "", "", "refused", "refused"],
    })  # fmt: skip
    choices = with_choice(sources)
    grouped = choices.group_by("source_uri").aggregate([("source_uri", "count"), ("choice", "min")])
    grouped = grouped.rename_columns(["source_uri", "count()", "min(choice)"]).sort_by("source_uri")
    out = expand_groups(grouped).to_pylist()
    assert [(r["source_uri"], r["kind"], r["status"], r["error"]) for r in out] == [
        ("a", "file", "", ""), ("b", "tar", "", ""), ("c", "row", "not_allowed", "refused"),
        ("a", "row", "duplicate", ""), ("a", "row", "duplicate", ""), ("c", "row", "duplicate", ""),
    ]


def test_csv_manifest_with_a_byte_order_mark(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_bytes("\ufeffurl,caption\na.jpg,first\n".encode("utf-8"))
    (tmp_path / "a.jpg").write_bytes(_jpeg(1))
    assert validate_inputs([str(manifest)], StorageConfig().for_checks(), "url")[0].kind == "manifest"
    assert classify_input(str(manifest)).uri == str(manifest)


# --- decoder -------------------------------------------------------------------------------------
def test_only_the_documented_formats_are_decoded():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n%%EndComments\nshowpage\n%%EOF\n"
    assert Image.open(io.BytesIO(eps)).format == "EPS"  # Pillow alone would open it (and run Ghostscript)
    ico = io.BytesIO()
    Image.new("RGB", (16, 16)).save(ico, format="ICO")
    for data, words in ((eps, "PostScript"), (ico.getvalue(), "")):
        with pytest.raises(ImageDecodeError) as exc:
            decode_image(data)
        assert exc.value.status == "not_an_image" and words in exc.value.message
    avif = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(avif, format="AVIF")
    assert decode_image(avif.getvalue()).pixels.shape == (16, 16, 3)


# --- the shipped bundle cache --------------------------------------------------------------------
def test_shipped_bundle_cache_is_per_bundle_private_and_verified(golden_bundle, tmp_path):
    from img2pose_core.bundle import create_bundle, open_bundle
    from img2pose_core.bundle import materialise_bundle

    first = open_bundle(golden_bundle)
    files = first.manifest["files"]
    # Same weights, another pose mean: another bundle, another digest, another folder.
    mean = np.load(golden_bundle / files["pose_mean"]["path"]) + 0.5
    np.save(tmp_path / "mean.npy", mean)
    other = open_bundle(create_bundle(
        weights=golden_bundle / files["weights"]["path"], pose_mean=tmp_path / "mean.npy",
        pose_stddev=golden_bundle / files["pose_stddev"]["path"], points_68=golden_bundle / files["points_68"]["path"],
        points_5=golden_bundle / files["points_5"]["path"], out=tmp_path / "other",
    ))  # fmt: skip
    assert other.model_sha256 == first.model_sha256 and other.digest != first.digest

    def shipped(bundle):
        names = [e["path"] for e in bundle.manifest["files"].values()] + ["bundle.json"]
        return {n: (bundle.root / n).read_bytes() for n in names}

    cache = tmp_path / "cache"
    a = materialise_bundle(shipped(first), first.digest, cache)
    b = materialise_bundle(shipped(other), other.digest, cache)
    assert a != b
    np.testing.assert_array_equal(open_bundle(b).pose_mean, mean)
    assert (cache / "shipped").stat().st_mode & 0o777 == 0o700
    # A planted or stale file under the right name is replaced by the shipped bytes on the next use.
    (b / files["pose_mean"]["path"]).write_bytes((a / files["pose_mean"]["path"]).read_bytes())
    materialise_bundle(shipped(other), other.digest, cache)
    assert open_bundle(b).digest == other.digest
    np.testing.assert_array_equal(open_bundle(b).pose_mean, mean)
    # A cache folder that others may write is refused.
    shared = tmp_path / "shared"
    (shared / "shipped").mkdir(parents=True)
    os.chmod(shared / "shipped", 0o777)
    with pytest.raises(RuntimeError, match="others may write"):
        materialise_bundle(shipped(first), first.digest, shared)


def test_bundle_json_digest_covers_every_file_and_setting(golden_bundle):
    from img2pose_core.bundle import open_bundle

    bundle = open_bundle(golden_bundle)
    manifest = json.loads((golden_bundle / "bundle.json").read_text())
    for change in (lambda m: m["model"].update(min_size=123), lambda m: m["files"]["points_5"].update(sha256="0" * 64)):
        changed = json.loads(json.dumps(manifest))
        change(changed)
        bundle2 = type(bundle)(**{**bundle.__dict__, "manifest": changed})
        assert bundle2.digest != bundle.digest
