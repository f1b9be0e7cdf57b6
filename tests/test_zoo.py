"""Model zoo: cards, verified resumable downloads from a local HTTP server, offline use, registry, CLI.

Every download goes to a ``http.server`` on 127.0.0.1 started by the test; the real network is
never touched. ``CEMKIT_CACHE`` points at ``tmp_path``.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml

from cemkit.errors import InputError
from cemkit.zoo import cards as cards_mod
from cemkit.zoo.cache import cards_dir, model_dir
from cemkit.zoo.cards import card_from_dict, get_card, read_card, shipped_cards
from cemkit.zoo.command import main as zoo_main
from cemkit.zoo.download import download, sha256_file
from cemkit.zoo.registry import encoder_weights, fetch, register, resolve

download_mod = importlib.import_module("cemkit.zoo.download")  # the package re-exports the function


# --------------------------------------------------------------------------- local HTTP server
class _Server:
    """Serves ``files`` with HTTP Range support; can drop the first connection after N bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}  # path -> bytes sent before the first response drops
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):  # the name http.server calls
                path = self.path.split("?")[0]
                rng = self.headers.get("Range")
                server.requests.append((path, rng))
                data = server.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if rng:
                    start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                drop = server.drop_after.pop(path, None)
                if drop is not None:
                    self.wfile.write(body[:drop])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("CEMKIT_CACHE", str(root))
    monkeypatch.delenv("CEMKIT_OFFLINE", raising=False)
    monkeypatch.setattr(download_mod.time, "sleep", lambda s: None)  # no back-off waits in tests
    return root


def _checkpoint_bytes(seed: int = 0, norms=(0.5, 0.1)) -> bytes:
    """A small MoCo-style checkpoint as bytes (~1 MB, so a download takes several chunks)."""
    g = torch.Generator().manual_seed(seed)
    state = {"module.encoder_q.conv1.weight": torch.randn(64, 1, 7, 7, generator=g),
             "module.encoder_q.layer1.0.conv1.weight": torch.randn(256, 256, 2, 2, generator=g),
             "module.encoder_q.fc.0.weight": torch.randn(8, 64, generator=g),
             "module.queue": torch.randn(8, 64, generator=g)}
    buf = io.BytesIO()
    torch.save({"epoch": 200, "arch": "resnet50", "state_dict": state, "norms": list(norms)}, buf)
    return buf.getvalue()


def _user_card(name: str, url: str, sha256: str | None, **extra) -> Path:
    data = {"name": name, "kind": "encoder", "architecture": "resnet50", "frames": 1,
            "in_chans": 1, "url": url, "sha256": sha256, **extra}
    folder = cards_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


# --------------------------------------------------------------------------- cards
def test_shipped_cards_describe_the_published_cem_encoders():
    cards = shipped_cards()
    moco = cards["cem500k_mocov2_resnet50"]
    assert moco.kind == "encoder" and moco.architecture == "resnet50" and moco.in_chans == 1
    assert moco.url == ("https://zenodo.org/record/6453140/files/"
                        "cem500k_mocov2_resnet50_200ep.pth.tar?download=1")
    assert moco.filename == "cem500k_mocov2_resnet50_200ep.pth.tar"
    assert moco.key_layout == "cellemnet_moco"
    assert moco.norms == (0.58331613, 0.09966064)
    assert moco.normalisation.precedence == "checkpoint"
    assert moco.sha256 is None  # not published: never invented
    assert moco.licence == "BSD-3-Clause" and "e65894" in moco.citation
    swav = cards["cem15m_swav_resnet50"]
    assert "record/6453160/" in swav.url
    assert swav.filename == "cem1.5m_swav_resnet50_200ep_balanced.pth.tar"
    assert swav.key_layout == "swav" and swav.norms == (0.57571, 0.12765)


def test_bad_cards_fail_naming_the_file_and_field(tmp_path):
    base = {"name": "m", "kind": "encoder", "frames": 1, "in_chans": 1, "url": "https://x/m.pth"}
    cases = [({**base, "colour": "red"}, "unknown field(s) colour"),
             ({**base, "kind": "decoder"}, "kind 'decoder'"),
             ({**base, "sha256": "abc"}, "not 64 hexadecimal"),
             ({**base, "frames": 0}, "frames must be a positive integer"),
             ({k: v for k, v in base.items() if k != "url"}, "exactly one of url"),
             ({**base, "normalisation": {"mean": 0.5}}, "normalisation must be a mapping"),
             ({k: v for k, v in base.items() if k != "kind"}, "missing required field(s) kind")]
    for data, problem in cases:
        path = tmp_path / "m.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(InputError) as info:
            read_card(path)
        assert str(path) in str(info.value) and problem in str(info.value), str(info.value)
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(base))
    with pytest.raises(InputError, match="differs from the file name"):
        read_card(path)
    path.write_text("name: [unclosed")
    with pytest.raises(InputError, match="not valid YAML"):
        read_card(path)


def test_user_card_shadows_shipped_card_with_a_warning(caplog):
    _user_card("cem500k_mocov2_resnet50", "https://example.org/mine.pth", None)
    with caplog.at_level(logging.WARNING, logger=cards_mod.__name__):
        card = get_card("cem500k_mocov2_resnet50")
    assert card.user and card.url == "https://example.org/mine.pth"
    assert "shadows the shipped card" in caplog.text
    with pytest.raises(InputError, match="no model called 'nope'.*cem15m_swav_resnet50"):
        get_card("nope")


# --------------------------------------------------------------------------- downloads
def test_download_verifies_and_moves_into_place(server, cache):
    data = _checkpoint_bytes()
    server.files["/enc.pth.tar"] = data
    sha = hashlib.sha256(data).hexdigest()
    _user_card("enc", server.url("/enc.pth.tar?download=1"), sha, size=len(data))
    path = resolve("zoo:enc", progress=False)
    assert path == cache / "models" / "enc" / "enc.pth.tar"
    assert path.read_bytes() == data
    assert not path.with_name("enc.pth.tar.part").exists()
    # the resolved file is what a zoo loader reads, with weights_only=True
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["norms"] == [0.5, 0.1] and ckpt["arch"] == "resnet50"
    # a second resolve uses the cache: no new request
    n = len(server.requests)
    assert resolve("zoo:enc", progress=False) == path
    assert len(server.requests) == n == 1


def test_resume_after_dropped_connection(server, cache):
    data = _checkpoint_bytes(seed=1)
    server.files["/enc.pth"] = data
    server.drop_after["/enc.pth"] = 300_000
    sha = hashlib.sha256(data).hexdigest()
    _user_card("enc", server.url("/enc.pth"), sha)
    path = resolve("zoo:enc", progress=False)
    assert sha256_file(path) == sha
    assert server.requests == [("/enc.pth", None), ("/enc.pth", "bytes=300000-")]


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    data = _checkpoint_bytes(seed=2)
    server.files["/w.pth"] = data
    server.drop_after["/w.pth"] = 123_457
    dest = tmp_path / "out" / "w.pth"
    with pytest.raises(InputError, match="next download resumes"):
        download(server.url("/w.pth"), dest, retries=0, progress=False)
    part = dest.with_name("w.pth.part")
    assert part.stat().st_size == 123_457 and not dest.exists()
    digest = download(server.url("/w.pth"), dest, sha256=hashlib.sha256(data).hexdigest(),
                      retries=0, progress=False)
    assert digest == hashlib.sha256(data).hexdigest() and dest.read_bytes() == data
    assert server.requests[-1] == ("/w.pth", "bytes=123457-") and not part.exists()


def test_complete_part_file_is_finished_after_a_416(server, tmp_path):
    data = b"x" * 5000
    server.files["/w.pth"] = data
    dest = tmp_path / "w.pth"
    dest.with_name("w.pth.part").write_bytes(data)  # interrupted before the move into place
    download(server.url("/w.pth"), dest, sha256=hashlib.sha256(data).hexdigest(), progress=False)
    assert dest.read_bytes() == data and server.requests == [("/w.pth", "bytes=5000-")]


def test_wrong_checksum_deletes_the_file_and_says_so(server, cache):
    server.files["/enc.pth"] = _checkpoint_bytes()
    wrong = "0" * 64
    _user_card("enc", server.url("/enc.pth"), wrong)
    with pytest.raises(InputError) as info:
        resolve("zoo:enc", progress=False)
    message = str(info.value)
    assert "checksum mismatch" in message and f"expected sha256 {wrong}" in message
    assert f"got {hashlib.sha256(server.files['/enc.pth']).hexdigest()}" in message
    assert "deleted" in message
    folder = cache / "models" / "enc"
    assert not (folder / "enc.pth").exists() and not (folder / "enc.pth.part").exists()


def test_http_error_is_not_retried(server, cache):
    _user_card("gone", server.url("/missing.pth"), None)
    with pytest.raises(InputError, match="HTTP 404"):
        resolve("zoo:gone", progress=False)
    assert len(server.requests) == 1


def test_unreachable_server_gives_up_after_retries(cache):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on this port now
    _user_card("down", f"http://127.0.0.1:{port}/m.pth", None)
    with pytest.raises(InputError, match=r"failed after 6 attempts.*cache: "):
        resolve("zoo:down", progress=False)


def test_offline_uses_the_cache_and_explains_a_missing_model(server, cache, monkeypatch):
    data = _checkpoint_bytes()
    server.files["/enc.pth"] = data
    _user_card("enc", server.url("/enc.pth"), hashlib.sha256(data).hexdigest())
    _user_card("other", server.url("/other.pth"), None)
    path = fetch(get_card("enc"), progress=False)
    server.close()  # no server any more
    monkeypatch.setenv("CEMKIT_OFFLINE", "1")
    assert resolve("zoo:enc") == path
    with pytest.raises(InputError) as info:
        resolve("zoo:other")
    message = str(info.value)
    assert "'other' is not in the cache" in message and "offline" in message
    assert str(cache / "models" / "other" / "other.pth") in message
    monkeypatch.delenv("CEMKIT_OFFLINE")
    with pytest.raises(InputError, match="offline"):
        resolve("zoo:other", offline=True)


def test_unverified_download_records_sha_and_detects_corruption(server, cache, caplog):
    data = _checkpoint_bytes(seed=3)
    server.files["/enc.pth"] = data
    _user_card("enc", server.url("/enc.pth"), None)  # like the Zenodo cards: no published sha256
    with caplog.at_level(logging.WARNING):
        path = resolve("zoo:enc", progress=False)
    assert "cannot be verified" in caplog.text
    record = path.with_name("enc.pth.sha256")
    assert record.read_text().split()[0] == hashlib.sha256(data).hexdigest()
    corrupt = bytearray(data)
    corrupt[1000] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(InputError, match="corrupt"):
        resolve("zoo:enc", offline=True)
    assert resolve("zoo:enc", progress=False).read_bytes() == data  # online: fetched again
    assert len(server.requests) == 2


def test_plain_paths_and_urls_resolve(server, tmp_path):
    local = tmp_path / "a.pth"
    local.write_bytes(b"abc")
    assert resolve(str(local)) == local
    with pytest.raises(InputError, match="does not exist"):
        resolve(tmp_path / "missing.pth")
    server.files["/u.pth"] = b"hello"
    path = resolve(server.url("/u.pth"), progress=False)
    assert path.read_bytes() == b"hello" and path.name == "u.pth"
    assert resolve(server.url("/u.pth"), offline=True) == path


# --------------------------------------------------------------------------- register
def test_register_local_checkpoint_reads_its_metadata(tmp_path, cache):
    pytest.importorskip("cemkit.models.encoders")
    ckpt = tmp_path / "my_moco.pth.tar"
    ckpt.write_bytes(_checkpoint_bytes(norms=(0.6, 0.11)))
    card = register(ckpt, licence="CC-BY-4.0")
    assert card.name == "my_moco" and card.user and card.path == str(ckpt.resolve())
    assert card.kind == "encoder" and card.architecture == "resnet50" and card.in_chans == 1
    assert card.key_layout == "cellemnet_moco"
    assert card.norms == (0.6, 0.11) and card.normalisation.precedence == "checkpoint"
    assert card.sha256 == sha256_file(ckpt) and card.size == ckpt.stat().st_size
    assert Path(card.source) == cards_dir() / "my_moco.yaml"
    assert resolve("zoo:my_moco") == ckpt.resolve()
    weights = encoder_weights("zoo:my_moco")
    assert weights.norms == (0.6, 0.11)
    assert set(weights.state_dict) == {"conv1.weight", "layer1.0.conv1.weight"}
    with pytest.raises(InputError, match="already registered"):
        register(ckpt)
    ckpt.write_bytes(_checkpoint_bytes(seed=9))
    with pytest.raises(InputError, match="has changed since it was registered"):
        resolve("zoo:my_moco")


def test_register_copy_and_card_norms_fill_a_checkpoint_without_norms(tmp_path, cache):
    pytest.importorskip("cemkit.models.encoders")
    ckpt = tmp_path / "plain.pth"
    torch.save({"conv1.weight": torch.ones(64, 1, 7, 7)}, ckpt)
    card = register(ckpt, name="plain", kind="encoder", architecture="resnet18",
                    norms=(0.4, 0.2), copy=True)
    assert card.path == str(model_dir("plain") / "plain.pth")
    ckpt.unlink()  # the copy in the cache is what the card uses
    weights = encoder_weights("zoo:plain")
    assert weights.norms == (0.4, 0.2) and card.normalisation.precedence == "card"
    assert torch.equal(weights.state_dict["conv1.weight"], torch.ones(64, 1, 7, 7))


def test_register_url_then_download_on_first_use(server, cache):
    data = _checkpoint_bytes(seed=4)
    server.files[["/files/seg.pth", "download=1"][0]] = data
    url = server.url("/files/seg.pth?download=1")
    with pytest.raises(InputError, match="pass --kind"):
        register(url)
    sha = hashlib.sha256(data).hexdigest()
    card = register(url, kind="encoder", architecture="resnet50", sha256=sha)
    assert card.name == "seg" and card.url == url and card.filename == "seg.pth"
    assert server.requests == []  # nothing fetched at registration
    assert resolve("zoo:seg", progress=False).read_bytes() == data
    # --fetch downloads now and records sha256 and size
    card = register(url, name="seg2", kind="encoder", fetch_now=True, progress=False)
    assert card.sha256 == sha and card.size == len(data)
    assert resolve("zoo:seg2", offline=True).read_bytes() == data


# --------------------------------------------------------------------------- CLI
def test_cli_list_info_download_register(server, cache, tmp_path, capsys):
    assert zoo_main(["list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"cem500k_mocov2_resnet50\s+encoder\s+resnet50\s+1\s+\?\s+no\s+shipped", out)
    assert "cem15m_swav_resnet50" in out and f"cache: {cache}" in out

    assert zoo_main(["info", "cem15m_swav_resnet50"]) == 0
    out = capsys.readouterr().out
    assert "key_layout     swav" in out
    assert "mean 0.57571, std 0.12765 (the checkpoint's own norms take precedence)" in out
    assert "sha256         unknown" in out
    assert f"no: {cache}/models/cem15m_swav_resnet50/" in out

    data = b"\x00" * 70_000
    server.files["/x.pth"] = data
    assert zoo_main(["register", server.url("/x.pth"), "--name", "x", "--kind", "segmentation",
                     "--frames", "3", "--sha256", hashlib.sha256(data).hexdigest()]) == 0
    assert "registered x (segmentation" in capsys.readouterr().out
    assert zoo_main(["download", "x", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == str(cache / "models" / "x" / "x.pth")
    assert zoo_main(["list", "--kind", "segmentation"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"x\s+segmentation\s+\?\s+3\s+68\.4 KiB\s+yes\s+user", out)
    assert "cem500k" not in out

    assert zoo_main(["info", "nope"]) == 2
    assert "no model called 'nope'" in capsys.readouterr().err
    assert zoo_main(["download", "cem500k_mocov2_resnet50", "--offline"]) == 2
    assert "is not in the cache" in capsys.readouterr().err


def test_card_roundtrip_through_yaml(tmp_path):
    card = card_from_dict({"name": "r", "kind": "segmentation", "frames": 5, "in_chans": 5,
                           "path": "/x/r.ckpt", "normalisation": {"mean": 0.5, "std": 0.2},
                           "sha256": "A" * 64}, source="t")
    assert card.sha256 == "a" * 64 and card.filename == "r.ckpt"
    path = cards_mod.write_card(card, tmp_path)
    assert read_card(path) == card


def test_explicit_norms_at_registration_win_over_the_checkpoint(tmp_path, cache):
    pytest.importorskip("cemkit.models.encoders")
    ckpt = tmp_path / "moco.pth"
    ckpt.write_bytes(_checkpoint_bytes(norms=(0.6, 0.11)))
    card = register(ckpt, norms=(0.4, 0.2))
    assert card.normalisation.precedence == "card"
    assert encoder_weights("zoo:moco").norms == (0.4, 0.2)
    plain = register(ckpt, name="moco_ckpt_norms")
    assert encoder_weights("zoo:moco_ckpt_norms").norms == (0.6, 0.11)
    assert plain.normalisation.precedence == "checkpoint"


def test_overwriting_a_card_drops_the_old_cached_file(server, cache):
    server.files["/v1/m.pth"] = b"old weights"
    server.files["/v2/m.pth"] = b"new weights"  # same file name, so the same cache path
    register(server.url("/v1/m.pth"), kind="encoder")
    assert resolve("zoo:m", progress=False).read_bytes() == b"old weights"
    register(server.url("/v2/m.pth"), kind="encoder", overwrite=True)
    assert resolve("zoo:m", progress=False).read_bytes() == b"new weights"
