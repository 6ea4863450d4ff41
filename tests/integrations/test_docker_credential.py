"""docker-credential-keyctl, called exactly as Docker calls a credential helper.

Docker runs ``docker-credential-<name> <action>``, writes the request on stdin,
reads stdout, and on exit status 1 takes stdout as the error text
(docker-credential-helpers client/client.go).  Each call here is a separate
process in its own fresh session keyring, as a non-root user, on the default
(persistent) store: what survives between calls is what Docker would see
across logins.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.conftest import require

from .conftest import BIN, run_fresh

HELPER = "docker-credential-keyctl"
NOT_FOUND = "credentials not found in native keychain\n"


def call(user, action: str, stdin: str = "", env: dict | None = None):  # noqa: ANN001, ANN201
    return run_fresh(user, [HELPER, action], input=stdin, env=env)


def creds(url: str, username: str, secret: str) -> str:
    return json.dumps({"ServerURL": url, "Username": username, "Secret": secret})


@pytest.fixture
def user(pki_user):  # noqa: ANN001, ANN201
    return pki_user


def test_store_get_list_erase_round_trip(user) -> None:  # noqa: ANN001
    url = "https://index.docker.io/v1/"
    stored = call(user, "store", creds(url, "ann", "pa$$ w0rd"))
    assert (stored.returncode, stored.stdout, stored.stderr) == (0, "", "")
    got = call(user, "get", url)
    assert got.returncode == 0, got.stdout
    # Byte for byte what Go's json.Encoder writes for credentials.Credentials.
    assert got.stdout == '{"ServerURL":"https://index.docker.io/v1/","Username":"ann","Secret":"pa$$ w0rd"}\n'
    listed = call(user, "list")
    assert (listed.returncode, listed.stdout) == (0, '{"https://index.docker.io/v1/":"ann"}\n')
    erased = call(user, "erase", url)
    assert (erased.returncode, erased.stdout) == (0, "")
    assert call(user, "get", url).stdout == NOT_FOUND
    assert call(user, "list").stdout == "{}\n"


def test_identity_token_round_trips(user) -> None:  # noqa: ANN001
    url = "registry.example.com"
    token = "eyJhbGciOiJSUzI1NiJ9.payload&sig<>"
    assert call(user, "store", creds(url, "<token>", token)).returncode == 0
    got = call(user, "get", url)
    assert got.returncode == 0
    # Go escapes <, > and & in strings; Docker decodes them back.
    assert '"Username":"\\u003ctoken\\u003e"' in got.stdout
    assert json.loads(got.stdout) == {"ServerURL": url, "Username": "<token>", "Secret": token}
    assert json.loads(call(user, "list").stdout) == {url: "<token>"}


def test_store_again_replaces_the_server_credentials(user) -> None:  # noqa: ANN001
    call(user, "store", creds("https://r.example", "ann", "one"))
    call(user, "store", creds("https://r.example", "bob", "two"))
    call(user, "store", creds("https://other.example", "cy", "three"))
    assert json.loads(call(user, "get", "https://r.example").stdout)["Username"] == "bob"
    assert json.loads(call(user, "get", "https://r.example").stdout)["Secret"] == "two"
    assert call(user, "list").stdout == '{"https://other.example":"cy","https://r.example":"bob"}\n'
    # Server URLs are matched exactly: no prefix or scheme folding.
    assert call(user, "get", "r.example").stdout == NOT_FOUND
    assert call(user, "get", "https://r.example/").stdout == NOT_FOUND


def test_server_url_is_trimmed_as_go_trims_it(user) -> None:  # noqa: ANN001
    call(user, "store", creds("https://trim.example", "ann", "pw"))
    got = call(user, "get", "  https://trim.example\n")
    assert json.loads(got.stdout)["ServerURL"] == "https://trim.example"


def test_not_found_errors_on_stdout_exit_1(user) -> None:  # noqa: ANN001
    for action in ("get", "erase"):
        out = call(user, action, "https://nowhere.example\n")
        assert (out.returncode, out.stdout, out.stderr) == (1, NOT_FOUND, ""), action


def test_missing_fields_use_the_standard_texts(user) -> None:  # noqa: ANN001
    cases = [
        ("store", json.dumps({"Username": "ann", "Secret": "s3cr3t-A"}), "no credentials server URL\n"),
        ("store", json.dumps({"ServerURL": "x", "Secret": "s3cr3t-B"}), "no credentials username\n"),
        ("store", json.dumps({"ServerURL": "x", "Username": None, "Secret": "s3cr3t-C"}),
         "no credentials username\n"),
        ("get", "", "no credentials server URL\n"),
        ("get", "  \n", "no credentials server URL\n"),
        ("erase", "", "no credentials server URL\n"),
    ]
    for action, stdin, expected in cases:
        out = call(user, action, stdin)
        assert (out.returncode, out.stdout) == (1, expected), (action, stdin)


def test_malformed_json_is_refused_without_echoing_the_secret(user) -> None:  # noqa: ANN001
    # encoding/json's texts, as the Go helpers print them (tests/integrations/test_cli_inputs.py
    # compares many more with the Go helper itself).
    for stdin, message in (
        ('{"ServerURL":"x","Username":"u","Secret":"s3cr3t-D"', "unexpected EOF"),
        ('["x","u","s3cr3t-E"]',
         "json: cannot unmarshal array into Go value of type credentials.Credentials"),
        ('{"ServerURL":"x","Username":"u","Secret":12345}',
         "json: cannot unmarshal number into Go struct field Credentials.Secret of type string"),
        ("", "EOF"),
        ("not json s3cr3t-F", "invalid character 'o' in literal null (expecting 'u')"),
    ):
        out = call(user, "store", stdin)
        assert (out.returncode, out.stdout) == (1, message + "\n"), stdin
        assert "s3cr3t" not in out.stdout + out.stderr and "12345" not in out.stdout
    assert call(user, "list").stdout == "{}\n"


def test_keys_match_case_insensitively_and_unknown_keys_are_ignored(user) -> None:  # noqa: ANN001
    stdin = '{"serverurl":"https://ci.example","USERNAME":"ann","secret":"pw","Extra":1}\n'
    assert call(user, "store", stdin).returncode == 0
    assert json.loads(call(user, "get", "https://ci.example").stdout)["Secret"] == "pw"


def test_version_usage_and_unknown_action(user) -> None:  # noqa: ANN001
    version = call(user, "version")
    assert version.returncode == 0
    assert version.stdout.startswith("docker-credential-keyctl (pam_keyinit_py) ")
    assert run_fresh(user, [HELPER, "--version"]).stdout == version.stdout
    usage = "Usage: docker-credential-keyctl <store|get|erase|list|version>\n"
    none = run_fresh(user, [HELPER])
    assert (none.returncode, none.stdout) == (1, usage)
    assert (run_fresh(user, [HELPER, "-h"]).returncode, run_fresh(user, [HELPER, "-h"]).stdout) == (0, usage)
    bad = call(user, "fetch")
    assert (bad.returncode, bad.stdout) == (1, "docker-credential-keyctl: unknown action: fetch\n")


def test_unknown_location_is_an_error_on_stdout(user) -> None:  # noqa: ANN001
    out = call(user, "list", env={"KEYINIT_STORE_LOCATION": "cloud"})
    assert out.returncode == 1
    assert out.stdout.startswith("unknown keyring location 'cloud'")


def test_credentials_are_possessor_only_and_seen_by_keyinit_secret(user) -> None:  # noqa: ANN001
    call(user, "store", creds("https://perm.example", "ann", "pw"))
    script = ("p=$(keyctl get_persistent @s) && r=$(keyctl search $p keyring keyinit:secrets) && "
              "for k in $r $(keyctl rlist $r); do keyctl rdescribe $k; done")
    described = run_fresh(user, ["sh", "-c", script]).stdout.splitlines()
    assert len(described) == 2
    for line in described:
        assert line.split(";")[:4][1:] == [str(user.uid), str(user.gid), "3f000000"], line
    # secretservice helper's attributes, so secret-tool style search finds Docker's items.
    found = run_fresh(user, ["keyinit", "secret", "search", "server", "https://perm.example"])
    assert "attribute.docker_cli = 1" in found.stdout
    assert "label = Registry credentials for https://perm.example" in found.stdout


def test_session_location_does_not_outlive_the_call(user) -> None:  # noqa: ANN001
    env = {"KEYINIT_STORE_LOCATION": "session"}
    assert call(user, "store", creds("https://s.example", "ann", "pw"), env=env).returncode == 0
    assert call(user, "get", "https://s.example", env=env).stdout == NOT_FOUND


def test_real_docker_cli_logout_erases_through_the_helper(user) -> None:  # noqa: ANN001
    """The docker CLI itself (no daemon needed for logout) drives the helper's erase."""
    docker = shutil.which("docker", path="/usr/local/bin:/usr/bin:/bin")
    require(docker, "docker CLI not installed")
    env = {"PATH": f"{BIN}:{os.path.dirname(docker)}:/usr/bin:/bin"}
    config = '{"auths":{"reg.example:5000":{}},"credsStore":"keyctl"}'
    script = f"mkdir -p ~/.docker && printf %s '{config}' > ~/.docker/config.json"
    setup = run_fresh(user, ["sh", "-c", script])
    assert setup.returncode == 0, setup.stderr
    assert call(user, "store", creds("reg.example:5000", "ann", "pw")).returncode == 0
    out = run_fresh(user, [docker, "logout", "reg.example:5000"], env=env, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Removing login credentials for reg.example:5000" in out.stdout
    assert call(user, "get", "reg.example:5000").stdout == NOT_FOUND
