from app.core.policy import Mode, parse_policy
from app.webhook.reload import PolicyReloader


class Holder:
    def __init__(self):
        self.current = parse_policy({})


def test_valid_change_swaps_invalid_keeps_last_good(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text("mode: warn\n")
    holder, results = Holder(), []
    reloader = PolicyReloader(holder, path, on_result=results.append)
    assert reloader.check() == "unchanged"
    path.write_text("mode: enforce\n")
    assert reloader.check() == "ok" and holder.current.mode is Mode.ENFORCE
    path.write_text("mode: loud\n")
    assert reloader.check() == "failed" and holder.current.mode is Mode.ENFORCE
    assert reloader.check() == "unchanged"  # the same bad bytes are not retried every tick
    path.unlink()
    assert reloader.check() == "unchanged"  # a file briefly missing mid-swap changes nothing
    assert results == ["ok", "failed"]
