"""qsattn.provenance: the revision results record."""
from qsattn import provenance


def test_the_stated_revision_wins_over_the_checkout(monkeypatch):
    """A tree copied to a GPU machine can sit in another checkout (the H200 validation rows
    recorded that checkout's HEAD): $QSATTN_GIT_REVISION, when set, is what results record."""
    monkeypatch.setenv("QSATTN_GIT_REVISION", "0123456789ab")
    assert provenance.git_revision() == "0123456789ab"


def test_outside_a_checkout_without_a_stated_revision(monkeypatch, tmp_path):
    monkeypatch.delenv("QSATTN_GIT_REVISION", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert provenance.git_revision(tmp_path) == "unknown"
