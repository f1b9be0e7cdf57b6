"""Checkpoint specs of `cemkit predict`: files, finetune folders, lists and zoo names."""

import pytest

from cemkit.errors import InputError
from cemkit.predict.models import resolve_checkpoints


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_finetune_folder_file_and_lists(tmp_path):
    run = tmp_path / "run"
    b1 = _touch(run / "1fm" / "best.ckpt")
    _touch(run / "1fm" / "last.ckpt")
    l3 = _touch(run / "3fm" / "last.ckpt")          # no best.ckpt: last.ckpt is used
    b5 = _touch(run / "5fm" / "best.ckpt")
    assert resolve_checkpoints(str(run)) == [b1, l3, b5]
    assert resolve_checkpoints(f"{b5},{b1}") == [b5, b1]
    assert resolve_checkpoints([str(b1), str(run / "5fm")]) == [b1, b5]
    single = _touch(tmp_path / "model.ckpt")
    assert resolve_checkpoints(single) == [single]


def test_errors_name_the_path(tmp_path):
    with pytest.raises(InputError, match="missing.ckpt"):
        resolve_checkpoints(str(tmp_path / "missing.ckpt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        resolve_checkpoints(str(tmp_path / "empty"))
    with pytest.raises(InputError):
        resolve_checkpoints([])


def test_zoo_names_resolve_lazily(tmp_path, monkeypatch):
    import cemkit.zoo

    target = _touch(tmp_path / "cache" / "mito_5fm.ckpt")
    seen = []
    monkeypatch.setattr(cemkit.zoo, "resolve", lambda spec: seen.append(spec) or target, raising=False)
    assert resolve_checkpoints("zoo:mito_5fm") == [target]
    assert seen == ["zoo:mito_5fm"]
