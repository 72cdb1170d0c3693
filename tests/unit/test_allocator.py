"""train.allocator: the hint to preload a caching allocator for CPU training."""

from train.allocator import loaded_allocator, preload_hint


def test_the_allocator_hint_names_tcmalloc_only_when_no_caching_allocator_is_loaded(tmp_path):
    glibc = "7f00-7f01 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    tcmalloc = glibc + "7f02-7f03 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n"
    assert loaded_allocator(glibc) is None and loaded_allocator(tcmalloc) == "tcmalloc"
    assert preload_hint(tcmalloc) is None
    assert "apt-get install libtcmalloc-minimal4" in preload_hint(glibc, libdir=tmp_path)
    (tmp_path / "libtcmalloc_minimal.so.4").touch()
    assert f"LD_PRELOAD={tmp_path / 'libtcmalloc_minimal.so.4'} deepfer-train" in preload_hint(glibc, libdir=tmp_path)
