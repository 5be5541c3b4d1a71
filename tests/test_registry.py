"""The target registry: each profile resolves to one runtime and one platform, a [remote]
table (or --remote) sends it to a board over SSH, and the ssh command line can only ever read
the destination as a host and each remote word as one word."""
import shlex

import pytest

from edgeprune.errors import UserError
from targets import platforms, profiles, registry, ssh, tools


def test_every_builtin_profile_has_a_runtime_and_a_platform_here():
    host = tools.host_isa()
    for name in profiles.builtin_names():
        p = profiles.load(name)
        rt, pf = registry.runtime_of(p), registry.platform_for(p)
        assert rt.name == p.runtime.kind and rt is registry.RUNTIMES[p.runtime.kind]
        assert pf.mode == ("native" if p.isa == host else "emulated"), name
        assert pf.indicative is (pf.mode == "native")
    c = registry.runtime_of(profiles.load("c-x86_64"))
    assert c.native_code and c.export_files == ("model.h", "model.c", "model_weights.c",
                                                "runner.c")


def test_a_remote_profile_runs_on_the_board_and_others_keep_their_ids(tmp_path):
    (tmp_path / "cfg").write_text("")
    base = profiles.load("c-x86_64")
    assert "remote" not in base.to_dict()  # the validate artifact id of a local run is unchanged
    p = base.with_remote("pi@board.local:2222", str(tmp_path / "cfg"), None)
    assert p.to_dict()["remote"]["host"] == "pi@board.local:2222"
    pf = registry.platform_for(p)
    assert isinstance(pf, platforms.Ssh) and pf.mode == "remote" and pf.indicative
    assert pf.static and pf.python == "python3"
    raw = {"isa": "aarch64", "remote": {"host": "pi", "python": "/opt/py/bin/python3"}}
    q = profiles.from_dict(raw, "board")
    assert registry.platform_for(q).isa == "aarch64" and q.remote.python == "/opt/py/bin/python3"


@pytest.mark.parametrize("host", ["", "-oProxyCommand=touch x", "pi@board;rm -rf /",
                                  "pi@board:0", "pi@board:99999", "a b", "$(id)"])
def test_a_destination_that_is_not_a_host_is_refused(host):
    with pytest.raises(UserError, match="remote.host"):
        profiles.from_dict({"isa": "x86_64", "remote": {"host": host}}, "t")


def test_a_remote_python_of_several_words_is_refused():
    with pytest.raises(UserError, match="remote.python must be one command"):
        profiles.from_dict({"isa": "x86_64", "remote": {"host": "pi", "python": "python3 -c x"}},
                           "t")


@pytest.mark.skipif(tools.SSH.find() is None, reason="no ssh client")
def test_the_ssh_argv_quotes_every_remote_word():
    b = ssh.Board("pi@[::1]:2200", connect_timeout_s=7)
    evil = "/tmp/a b'$(touch x)`id`"
    argv = b.argv(["cat", evil], stdout_to="/tmp/o u;t")
    assert argv[argv.index("--") + 1] == "pi@::1" and argv[argv.index("-p") + 1] == "2200"
    assert "BatchMode=yes" in argv and "ConnectTimeout=7" in argv
    words = shlex.split(argv[-1])  # what the board's shell will see
    assert words == ["cat", evil, ">", "/tmp/o u;t"]
    assert argv[argv.index("--") + 1:-1] == ["pi@::1"]  # nothing else after the destination
