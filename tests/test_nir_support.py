"""An installed nir older than edgeprune's floor (what installing Sinabs' or Rockpool's [nir]
extra does to a venv) is named in one line with exit 2 before any work, never a TypeError after
search and retrain."""
import textwrap
from pathlib import Path


from edgeprune.nir_support import NIR_FLOOR, _parse, nir_problem
from tests.conftest import ROOT, run_cli


def test_the_installed_nir_meets_the_floor_and_the_pyproject_declares_it():
    assert nir_problem() is None
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'"nir>={NIR_FLOOR}"' in pyproject
    assert _parse("1.0.4") < _parse(NIR_FLOOR) <= _parse("1.0.8") and _parse("1.0.10") > (1, 0, 6)


def _old_nir(tmp_path):
    """The installed nir, seen as 1.0.4 ahead of itself on the path: its version says 1.0.4
    and its LIF, like 1.0.4's, has no v_reset (norse and nirtorch import it at start-up)."""
    import nir

    real = Path(nir.__file__).parent
    pkg = tmp_path / "oldnir" / "nir"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(f"""
        import dataclasses
        __path__ = [{str(real)!r}]
        __file__ = {str(real / "__init__.py")!r}
        exec(compile(open(__file__).read(), __file__, "exec"))
        __version__ = "1.0.4"

        @dataclasses.dataclass(eq=False)
        class LIF(NIRNode):
            tau: object
            r: object
            v_leak: object
            v_threshold: object
    """))
    return {"PYTHONPATH": f"{pkg.parent}:{ROOT}"}


def test_an_old_nir_stops_compress_and_import_before_any_work(tmp_path):
    env = _old_nir(tmp_path)
    nir_file = tmp_path / "m.nir"
    nir_file.write_bytes(b"not read: the nir check comes first")
    for args in (("compress", nir_file, "--data", "digits"),
                 ("compress", "--data", "digits", "--sparsity", "0.5"),
                 ("import-model", nir_file, "--data", "none")):
        out = tmp_path / "runs"
        r = run_cli(*args, "--out", out, env_extra=env)
        assert r.returncode == 2, r.stderr[-1500:]
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "nir 1.0.4 is installed" in lines[0] and \
            f"nir>={NIR_FLOOR}" in lines[0], r.stderr
        assert not out.exists() or not any(out.rglob("model.pt"))  # nothing was trained
    # --no-nir: compress needs no nir writer, and goes past the check (here, to a data error)
    r = run_cli("compress", "--data", "nosuchdata", "--no-nir", "--out", tmp_path / "r2",
                env_extra=env)
    assert r.returncode == 2 and "nir" not in r.stderr.split(":")[0] and \
        "nir 1.0.4" not in r.stderr, r.stderr
