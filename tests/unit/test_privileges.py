"""fastmail.master.privileges.give_tree: the root master gives the data folder to the workers' user without
ever following what that user could have planted there."""

from __future__ import annotations

import os

import pytest

from fastmail.master.privileges import Credentials, give_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")

USER = Credentials(uid=65534, gid=65534, user="")


def _owner(path: object) -> tuple[int, int]:
    st = os.lstat(path)  # type: ignore[arg-type]
    return st.st_uid, st.st_gid


def test_everything_under_the_folder_changes_owner(tmp_path):
    data = tmp_path / "data"
    (data / "index").mkdir(parents=True)
    (data / "index" / "data.mdb").write_bytes(b"x")
    (data / "segments" / "deep").mkdir(parents=True)
    (data / "segments" / "deep" / "a.seg").write_bytes(b"y")
    assert give_tree(data, USER) == 6
    for root, dirs, files in os.walk(data):
        for p in [root, *(os.path.join(root, n) for n in dirs + files)]:
            assert _owner(p) == (65534, 65534), p
    assert give_tree(data, USER) == 0  # already right: nothing touched


def test_links_planted_in_the_folder_never_hand_over_their_targets(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret"
    secret.write_bytes(b"root's")
    data = tmp_path / "data"
    data.mkdir()
    (data / "file-link").symlink_to(secret)
    (data / "dir-link").symlink_to(outside)
    os.link(secret, data / "hard-link")
    give_tree(data, USER)
    assert _owner(secret) == (0, 0) and _owner(outside) == (0, 0)
    assert _owner(data / "file-link") == (65534, 65534)  # the link itself
    assert _owner(data) == (65534, 65534)
