"""The test process's exit (tests/conftest.py): a run that imported Ray leaves without the interpreter's
finalisation (ray-project/ray#31145) and still exits with pytest's own status."""
import subprocess
import sys
import textwrap

from conftest import ROOT, cli_env


def test_a_run_that_imported_ray_exits_with_pytests_status_without_finalising(tmp_path):
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    (tmp_path / "test_x.py").write_text(textwrap.dedent(f"""
        import atexit, os
        import ray  # noqa: F401

        atexit.register(lambda: open({str(tmp_path / "finalised")!r}, "w").close())

        def test_x():
            assert not os.environ.get("FAIL")
        """))
    for env, status in (({}, 0), ({"FAIL": "1"}, 1), ({"SPARSESEARCH_TESTS_FULL_EXIT": "1"}, 0)):
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                           cwd=tmp_path, env=cli_env(**env), capture_output=True, text=True, timeout=300)
        assert r.returncode == status, r.stdout[-2000:] + r.stderr[-2000:]
        assert ("1 passed" if status == 0 else "1 failed") in r.stdout  # the summary is printed first
        finalised = (tmp_path / "finalised").exists()
        assert finalised == ("SPARSESEARCH_TESTS_FULL_EXIT" in env), env
        (tmp_path / "finalised").unlink(missing_ok=True)
