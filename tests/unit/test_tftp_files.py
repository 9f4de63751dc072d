"""Path confinement (every bad path kind refused with ERROR 1 or 2), the configured boot
file exception, and the content cache (read once, re-read when the file changes)."""

from __future__ import annotations

import os

import pytest

from proxydhcp import config
from proxydhcp.tftp import files
from proxydhcp.tftp import packet as pk
from proxydhcp.tftp.transfer import ACCESS_DENIED, NOT_FOUND


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    (r / "sub").mkdir(parents=True)
    (r / "ok.bin").write_bytes(b"ok")
    (r / "sub" / "deep.bin").write_bytes(b"deep")
    (tmp_path / "secret").write_bytes(b"secret")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "chosen.efi").write_bytes(b"chosen")
    os.symlink("ok.bin", r / "link_in")
    os.symlink(str(tmp_path / "secret"), r / "link_out")
    os.symlink(str(tmp_path), r / "dir_out")
    os.symlink(str(tmp_path / "elsewhere" / "chosen.efi"), r / "boot.efi")
    os.symlink(str(tmp_path / "elsewhere" / "chosen.efi"), r / "unconfigured.efi")
    os.mkfifo(r / "fifo")
    return str(r)


def cfg_for(root, firmware=None, quirks=None):
    fw = firmware if firmware is not None else {"x64-uefi": "boot.efi"}
    text = f"tftp: {{root: {root}}}\nboot: {{firmware: {fw!r}}}\n"
    if quirks:
        text += f"dhcp: {{quirks: {quirks!r}}}\n"
    return config.parse(text)


def serve(name, root, cfg=None, backslash_as_slash=False):
    cfg = cfg or cfg_for(root)
    r = files.resolve(name, root, files.boot_files(cfg), backslash_as_slash)
    return files.ContentCache().open(r, root, name).data


@pytest.mark.parametrize("name,data", [("ok.bin", b"ok"), ("/ok.bin", b"ok"), ("sub/deep.bin", b"deep"),
                                       ("./sub//deep.bin", b"deep"), ("link_in", b"ok")])
def test_allowed_names(root, name, data):
    assert serve(name, root) == data


def test_backslash_as_slash_serves_windows_style_names_and_still_refuses_escapes(root):
    assert serve("sub\\deep.bin", root, backslash_as_slash=True) == b"deep"
    assert serve("\\sub\\deep.bin", root, backslash_as_slash=True) == b"deep"
    for name in ("..\\secret", "sub\\..\\..\\secret"):
        with pytest.raises(files.FileRefused) as e:
            serve(name, root, backslash_as_slash=True)
        assert e.value.code == pk.ERR_ACCESS and "'..'" in e.value.message


def test_absolute_path_inside_root_served(root):
    assert serve(os.path.join(root, "sub", "deep.bin"), root) == b"deep"


BAD = [
    ("../secret", pk.ERR_ACCESS),                  # dot-dot
    ("sub/../../secret", pk.ERR_ACCESS),
    ("sub/../ok.bin", pk.ERR_ACCESS),              # even when it would stay inside
    ("..\\secret", pk.ERR_ACCESS),                 # backslashes (unless tftp.backslash_as_slash)
    ("sub\\..\\..\\secret", pk.ERR_ACCESS),
    ("sub\\deep.bin", pk.ERR_ACCESS),             # even inside the root
    ("/etc/passwd", pk.ERR_NOT_FOUND),             # absolute path outside: looked up in the root
    ("link_out", pk.ERR_ACCESS),                   # symlink leaving the root
    ("dir_out/secret", pk.ERR_ACCESS),             # through a directory symlink
    ("unconfigured.efi", pk.ERR_ACCESS),           # leaves the root and not a configured boot file
    ("ok.bin\0../secret", pk.ERR_ACCESS),          # NUL byte
    ("a" * 600, pk.ERR_ACCESS),                    # over-long
    ("sub", pk.ERR_ACCESS),                        # a directory
    ("fifo", pk.ERR_ACCESS),                       # not a regular file (must not block)
    ("missing.bin", pk.ERR_NOT_FOUND),
    ("", pk.ERR_NOT_FOUND),
    ("/", pk.ERR_NOT_FOUND),
]


@pytest.mark.parametrize("name,code", BAD)
def test_refused(root, name, code):
    with pytest.raises(files.FileRefused) as exc:
        serve(name, root)
    assert exc.value.code == code
    assert exc.value.outcome == (ACCESS_DENIED if code == pk.ERR_ACCESS else NOT_FOUND)


def test_unreadable_file(root, monkeypatch):
    """EACCES on open (faked: the tests run as root, which reads any file)."""
    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(files.os, "open", denied)
    with pytest.raises(files.FileRefused) as exc:
        serve("ok.bin", root)
    assert exc.value.code == pk.ERR_ACCESS and "Permission denied" in exc.value.message


def test_configured_boot_file_followed_out_of_root(root, tmp_path):
    assert serve("boot.efi", root) == b"chosen"
    assert serve("/boot.efi", root) == b"chosen"


def test_absolute_configured_boot_file_served_by_base_name(root, tmp_path):
    target = str(tmp_path / "elsewhere" / "chosen.efi")
    cfg = cfg_for(root, {"x64-uefi": target})
    assert files.boot_files(cfg) == {"chosen.efi": target}
    assert serve("chosen.efi", root, cfg) == b"chosen"


def test_quirk_firmware_is_a_boot_file(root):
    cfg = cfg_for(root, {}, [{"match": {"arch": [7]}, "set": {"firmware": "unconfigured.efi"}}])
    assert serve("unconfigured.efi", root, cfg) == b"chosen"


def test_default_config_serves_debian_ipxe_efi_symlink():
    cfg = config.parse(None)
    if not os.path.exists("/usr/lib/ipxe/ipxe.efi"):
        pytest.skip("Debian ipxe package not installed")
    assert os.path.islink("/usr/lib/ipxe/ipxe.efi")
    boot = files.boot_files(cfg)
    assert boot["ipxe.efi"] == "/usr/lib/ipxe/ipxe.efi"
    r = files.resolve("ipxe.efi", cfg.tftp.root, boot)
    data = files.ContentCache().open(r, cfg.tftp.root, "ipxe.efi").data
    with open("/boot/ipxe.efi", "rb") as fh:
        assert data == fh.read()
    if os.path.islink("/usr/lib/ipxe/ipxe.lkrn"):
        with pytest.raises(files.FileRefused):   # same kind of link, but not a configured boot file
            files.resolve("ipxe.lkrn", cfg.tftp.root, boot)


def test_normalise():
    assert files.normalise("\\a\\b", "/srv/tftp", backslash_as_slash=True) == "a/b"
    assert files.normalise("/srv/tftp/a/./b", "/srv/tftp") == "a/b"
    assert files.normalise("//a//b/", "/srv/tftp") == "a/b"


def test_cache_reads_once_and_rereads_on_change(root):
    cache = files.ContentCache()
    boot = files.boot_files(cfg_for(root))
    r = files.resolve("ok.bin", root, boot)
    for _ in range(100):
        c = cache.open(r, root, "ok.bin")
    assert cache.reads == 1 and c.data == b"ok"
    assert cache.open(r, root, "ok.bin").blocks(512) is c.blocks(512)     # packets built once too
    with open(os.path.join(root, "ok.bin"), "wb") as fh:
        fh.write(b"changed!")
    assert cache.open(r, root, "ok.bin").data == b"changed!" and cache.reads == 2
    # replaced by another file (new inode), same size and mtime
    st = os.stat(os.path.join(root, "ok.bin"))
    tmp = os.path.join(root, "ok.new")
    with open(tmp, "wb") as fh:
        fh.write(b"CHANGED!")
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp, os.path.join(root, "ok.bin"))
    assert cache.open(r, root, "ok.bin").data == b"CHANGED!" and cache.reads == 3


def test_cache_budget_drops_least_recently_used(tmp_path):
    for i in range(4):
        (tmp_path / f"f{i}").write_bytes(bytes(1000))
    cache = files.ContentCache(budget=2500)
    for i in range(4):
        cache.open(files.resolve(f"f{i}", str(tmp_path), {}), str(tmp_path), f"f{i}")
    assert len(cache._items) == 2


def test_precompute_bounded_per_file(tmp_path):
    (tmp_path / "f").write_bytes(os.urandom(5000))
    c = files.ContentCache().open(files.resolve("f", str(tmp_path), {}), str(tmp_path), "f")
    for bs in range(500, 520):
        assert b"".join(p[4:] for p in c.blocks(bs).packets(1, c.blocks(bs).count + 1)) == c.data
    assert len(c._blocks) == files.PRECOMPUTE_BLKSIZES


def test_netascii():
    c = files.Content("x", (), b"a\nb\rc", {})
    assert c.netascii().data == b"a\r\nb\r\0c"
