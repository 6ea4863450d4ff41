"""The service's Prometheus metrics and its key-quota guard, against a real KDC and real keyrings.

The exposition is read the way an operator reads it (``keyinit metrics``, or the textfile that
node_exporter collects) and parsed with prometheus_client's own parser; the counters are checked
to move with real events: a login, a renewal, a renewal with the KDC down.  The quota guard is
driven by lowering ``/proc/sys/kernel/keys/maxbytes`` (restored afterwards) until the uid has
room for its ticket cache but not for a second generation of it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from pam_keyinit_py import protocol as P
from pam_keyinit_py.keyutils import proc
from pam_keyinit_py.lab.users import settle
from pam_keyinit_py.tickets.quota import cache_sizes
from tests.conftest import VENV_BIN, require_root
from tests.kdc import ticketd as td
from tests.kdc.ticketd import TEST_CONFIG, SessionHolder, SvcUser, TicketD, klist_ok, public_tmpdir

svc_user, ticketd, user_krb5 = td.svc_user, td.ticketd, td.user_krb5

MAXBYTES = Path("/proc/sys/kernel/keys/maxbytes")


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition, through prometheus_client's parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(daemon: TicketD) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``keyinit metrics`` as root, parsed."""
    out = subprocess.run([str(VENV_BIN / "keyinit"), "metrics", "--socket", daemon.socket],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return parse(out.stdout)


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_move_with_a_login_a_renewal_and_a_renewal_with_the_kdc_down(ticketd, svc_user, realm):
    before = scrape(ticketd)
    assert value(before, "keyinit_auths_total", code="ok") == 0
    assert value(before, "keyinit_sessions") == 0
    assert value(before, "keyinit_tickets", origin="login") == 0
    assert ("keyinit_ticket_soonest_expiry_seconds", ()) not in before  # no ticket, no expiry

    assert not svc_user.auth(ticketd, password="wrong")["ok"]
    first = svc_user.auth(ticketd)
    assert first["ok"], first
    holder = SessionHolder(ticketd, svc_user.user)
    after_login = scrape(ticketd)
    assert value(after_login, "keyinit_auths_total", code="ok") == 1
    assert value(after_login, "keyinit_auths_total", code="bad_password") == 1
    assert value(after_login, "keyinit_sessions") == 1
    assert value(after_login, "keyinit_users") == 1
    assert value(after_login, "keyinit_tickets", origin="login") == 1
    assert 0 < value(after_login, "keyinit_ticket_soonest_expiry_seconds") <= 30
    # Two AS exchanges (the wrong password and the login), each timed; validation adds a TGS.
    assert value(after_login, "keyinit_kdc_request_seconds_count") >= 2
    assert 0 < value(after_login, "keyinit_key_quota_bytes_ratio") <= 1
    assert 0 < value(after_login, "keyinit_key_quota_keys_ratio") <= 1

    renewed = ticketd.wait_for(lambda: value(scrape(ticketd), "keyinit_renewals_total", code="ok") >= 1,
                               20, "a renewal in the metrics")
    assert renewed
    realm.stop_kdc()
    try:
        ticketd.wait_for(lambda: value(scrape(ticketd), "keyinit_renewals_total", code=P.KDC_UNREACHABLE),
                         20, "a failed renewal with the KDC down in the metrics")
    finally:
        realm.start_kdc()
    holder.close()
    closed = scrape(ticketd)
    assert value(closed, "keyinit_sessions") == 0
    assert value(closed, "keyinit_tickets", origin="login") == 0


def test_metrics_are_root_only(ticketd, svc_user):
    """A user's ``metrics`` request is refused (the counts cover every user), and says so."""
    reply = ticketd.request_as(svc_user.user, {"op": "metrics"})
    assert not reply["ok"] and reply["code"] == P.DENIED, reply
    out = svc_user.user.run([str(VENV_BIN / "keyinit"), "metrics", "--socket", ticketd.socket])
    assert out.returncode == 1 and "only root" in out.stderr, out
    assert out.stdout == ""


def test_metrics_textfile_is_written_atomically_for_node_exporter(realm, tmp_path):
    require_root()
    directory = public_tmpdir("pkd-metrics-")
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    target = textdir / "keyinit.prom"
    daemon = TicketD(directory, realm.env, **TEST_CONFIG, metrics_textfile=str(target), metrics_interval=0.2)
    user = SvcUser(realm)
    daemon.start()
    try:
        daemon.wait_for(target.exists, 10, "the metrics textfile")
        assert value(parse(target.read_text()), "keyinit_auths_total", code="ok") == 0
        assert user.auth(daemon)["ok"]
        daemon.wait_for(lambda: value(parse(target.read_text()), "keyinit_auths_total", code="ok") == 1, 10,
                        "the login counted in the textfile")
        assert oct(target.stat().st_mode & 0o777) == oct(0o644)
    finally:
        daemon.stop()
        print(daemon.log())
        user.cleanup()
    # Nothing but the file itself: temporary files are renamed over it or removed.
    assert sorted(p.name for p in textdir.iterdir()) == ["keyinit.prom"]
    shutil.rmtree(directory, ignore_errors=True)


def test_quota_guard_renews_in_place_when_a_second_generation_does_not_fit(ticketd, svc_user, user_krb5):
    """Room for the ticket cache but not for a second one: the renewal still succeeds (in place),
    warns naming kernel.keys.maxbytes, and counts it; the user holds a valid ticket throughout."""
    reply = svc_user.auth(ticketd)
    assert reply["ok"], reply
    holder = SessionHolder(ticketd, svc_user.user)
    uid = svc_user.uid
    # Let the renewals already due finish and their old generations be destroyed, then measure.
    ticketd.wait_for(lambda: len(cache_sizes(uid)) == 1, 10, "one cache generation")
    settle(uid)
    (ccache,) = [t["ccache"] for t in ticketd.request({"op": "tickets", "uid": uid})["tickets"]]
    sub = ccache.rsplit(":", 1)[-1]
    gen_bytes, gen_keys = cache_sizes(uid)[sub]
    used = proc.key_user(uid).qnbytes
    original = MAXBYTES.read_text()
    guarded_before = value(scrape(ticketd), "keyinit_quota_guard_total")
    # Half a generation free: an in-place update (the same-sized TGT) fits, a second cache does not.
    MAXBYTES.write_text(str(used + gen_bytes // 2))
    try:
        renewed = ticketd.request({"op": "renew", "uid": uid}, timeout=30)
        assert klist_ok(svc_user.user, user_krb5)
    finally:
        MAXBYTES.write_text(original)
    assert renewed["ok"] and renewed["errors"] == [], renewed
    (row,) = renewed["tickets"]
    assert row["ccache"] == ccache  # renewed where it was: no new generation
    assert row["renewed"] >= 1
    log = ticketd.log()
    assert "renewing in place" in log and "kernel.keys.maxbytes" in log
    assert value(scrape(ticketd), "keyinit_quota_guard_total") >= guarded_before + 1
    # The renewed TGT replaced the old one's key (add_key updates a key of the same description):
    # the cache holds as many keys as before, and klist reads it.
    assert cache_sizes(uid)[sub][1] == gen_keys
    assert klist_ok(svc_user.user, user_krb5)
    holder.close()
    ticketd.wait_for(lambda: cache_sizes(uid) == {}, 5, "caches cleared at logout")


def test_metrics_config_keys() -> None:
    """metrics_textfile must be absolute and metrics_interval positive; the shipped file parses."""
    import tomllib

    import pytest

    from pam_keyinit_py.tickets.config import ConfigError, parse
    from tests.conftest import REPO

    shipped = parse(tomllib.loads((REPO / "etc/keyinit/ticketd.toml").read_text()))
    assert shipped.metrics_textfile == "" and shipped.metrics_interval == 60
    assert parse({"metrics_textfile": "/var/lib/node/keyinit.prom"}).metrics_textfile.endswith(".prom")
    with pytest.raises(ConfigError, match="absolute"):
        parse({"metrics_textfile": "keyinit.prom"})
    with pytest.raises(ConfigError, match="metrics_interval"):
        parse({"metrics_interval": 0})
