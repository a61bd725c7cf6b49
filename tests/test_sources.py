"""Official files: local folder, download from pinned URLs (local server), archives, errors."""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import zipfile

import pytest
import yaml

from pipeline.data.sources import SourceError, Sources, sha256_tree

BODY = b'{"database": {}}\n'
SHA = hashlib.sha256(BODY).hexdigest()


def _spec(tmp_path, **entry):
    f = tmp_path / "source.yaml"
    f.write_text(yaml.safe_dump({"files": [{"name": "annotations", "path": "ann.json",
                                            "url": None, "sha256": SHA, **entry}]}))
    return f


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    return buf.getvalue()


def _targz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for n, b in members.items():
            info = tarfile.TarInfo(n)
            info.size = len(b)
            t.addfile(info, io.BytesIO(b))
    return buf.getvalue()


def test_local_file_is_verified_and_recorded(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ann.json").write_bytes(BODY)
    s = Sources("youcook2", _spec(tmp_path), tmp_path / "src", download=False)
    assert s.get("annotations").read_bytes() == BODY
    assert s.used["annotations"] == {"path": "ann.json", "url": None, "sha256": SHA,
                                     "pinned": True}


def test_sha256_mismatch_names_file_and_both_hashes(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "ann.json").write_bytes(BODY + b" ")
    s = Sources("youcook2", _spec(tmp_path), tmp_path / "src", download=False)
    with pytest.raises(SourceError) as e:
        s.get("annotations")
    assert "ann.json" in str(e.value) and SHA in str(e.value) and "mismatch" in str(e.value)


def test_offline_without_file_says_what_to_put_where(tmp_path):
    s = Sources("youcook2", _spec(tmp_path, url="http://127.0.0.1:9/x.json"), tmp_path / "src",
                download=False)
    with pytest.raises(SourceError) as e:
        s.get("annotations")
    msg = str(e.value)
    assert "ann.json" in msg and str(tmp_path / "src" / "ann.json") in msg
    assert "manifest.youcook2.source_dir" in msg and "http://127.0.0.1:9/x.json" in msg


def test_refused_connection_gives_the_same_clear_message(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    s = Sources("msrvtt", _spec(tmp_path, url=f"http://127.0.0.1:{port}/a.json"),
                tmp_path / "src", download=True, timeout_s=5)
    with pytest.raises(SourceError, match="download failed.*Put it at"):
        s.get("annotations")
    assert not (tmp_path / "src" / "ann.json").exists()


@pytest.mark.parametrize("status", [403, 404, 410, 500])
def test_http_errors_leave_nothing_behind(tmp_path, http_server, status):
    base, routes = http_server
    routes["/ann.json"] = (status, b"nope", {})
    s = Sources("crosstask", _spec(tmp_path, url=f"{base}/ann.json"), tmp_path / "src", True)
    with pytest.raises(SourceError, match=f"HTTP Error {status}"):
        s.get("annotations")
    assert list((tmp_path / "src").iterdir()) == []


def test_truncated_body_is_an_error(tmp_path, http_server):
    base, routes = http_server
    routes["/ann.json"] = (200, BODY[:5], {"Content-Length": str(len(BODY))})
    s = Sources("howto100m", _spec(tmp_path, url=f"{base}/ann.json"), tmp_path / "src", True,
                timeout_s=5)
    with pytest.raises(SourceError):
        s.get("annotations")
    assert not (tmp_path / "src" / "ann.json").exists()


def test_plain_download_then_reuse(tmp_path, http_server):
    base, routes = http_server
    routes["/ann.json"] = (200, BODY, {})
    s = Sources("youcook2", _spec(tmp_path, url=f"{base}/ann.json"), tmp_path / "src", True)
    assert s.get("annotations").read_bytes() == BODY
    routes.clear()  # a second run must not need the network
    assert Sources("youcook2", _spec(tmp_path, url=f"{base}/ann.json"), tmp_path / "src",
                   True).get("annotations").read_bytes() == BODY


@pytest.mark.parametrize("pack", [_zip, _targz])
def test_member_extracted_from_archive(tmp_path, http_server, pack):
    base, routes = http_server
    blob = pack({"release/ann.json": BODY, "release/other.txt": b"x"})
    routes["/a"] = (200, blob, {})
    spec = _spec(tmp_path, url=f"{base}/a", member="ann.json",
                 archive_sha256=hashlib.sha256(blob).hexdigest())
    assert Sources("youcook2", spec, tmp_path / "src", True).get("annotations").read_bytes() == BODY


def test_archive_hash_mismatch(tmp_path, http_server):
    base, routes = http_server
    routes["/a"] = (200, _zip({"ann.json": BODY}), {})
    spec = _spec(tmp_path, url=f"{base}/a", member="ann.json", archive_sha256="0" * 64)
    with pytest.raises(SourceError, match="sha256 mismatch"):
        Sources("youcook2", spec, tmp_path / "src", True).get("annotations")


def test_folder_member_and_tree_hash(tmp_path, http_server):
    base, routes = http_server
    routes["/r.zip"] = (200, _zip({"rel/a.csv": b"1", "rel/sub/b.csv": b"2", "x": b"3"}), {})
    f = tmp_path / "source.yaml"
    f.write_text(yaml.safe_dump({"files": [{"name": "release", "path": "rel/", "sha256": None,
                                            "url": f"{base}/r.zip", "member": "rel/"}]}))
    s = Sources("crosstask", f, tmp_path / "src", True)
    got = s.get("release")
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == [
        "a.csv", "sub/b.csv"]
    assert s.used["release"]["sha256"] == sha256_tree(got) and not s.used["release"]["pinned"]


def test_zip_slip_member_rejected(tmp_path, http_server):
    base, routes = http_server
    routes["/evil.zip"] = (200, _zip({"../../evil.json": BODY}), {})
    spec = _spec(tmp_path, url=f"{base}/evil.zip", member="evil.json")
    with pytest.raises(SourceError, match="not a safe relative path"):
        Sources("youcook2", spec, tmp_path / "src", True).get("annotations")
    assert not (tmp_path / "evil.json").exists()


@pytest.mark.parametrize("entry, words", [
    ({"path": "../up.json"}, "not a safe relative path"),
    ({"path": "/abs.json"}, "not a safe relative path"),
    ({"url": "file:///etc/passwd"}, "only http(s)"),
    ({"colour": "red"}, "unexpected keyword"),
])
def test_hostile_source_yaml(tmp_path, entry, words):
    with pytest.raises(SourceError, match=words.replace("(", r"\(").replace(")", r"\)")):
        Sources("youcook2", _spec(tmp_path, **entry), tmp_path / "src", True)


def test_unknown_file_name(tmp_path):
    s = Sources("youcook2", _spec(tmp_path), tmp_path, False)
    with pytest.raises(SourceError, match="no file named 'captions'"):
        s.get("captions")


def test_one_archive_download_serves_every_listed_member(tmp_path, http_server):
    base, routes = http_server
    blob = _zip({"d/a.csv": b"a", "d/b.csv": b"b"})
    routes["/d.zip"] = (200, blob, {})
    f = tmp_path / "source.yaml"
    f.write_text(yaml.safe_dump({"files": [
        {"name": n, "path": f"{n}.csv", "sha256": None, "url": f"{base}/d.zip",
         "member": f"d/{n}.csv"} for n in ("a", "b")]}))
    s = Sources("msrvtt", f, tmp_path / "src", True)
    assert s.get("a").read_bytes() == b"a"
    routes.clear()  # b must come from the first download
    assert s.get("b").read_bytes() == b"b"
