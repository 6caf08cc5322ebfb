"""The reference renders that generation/tests/real_templates.rs compares minijinja with
are what Python's jinja2 (with Hugging Face's settings) renders today."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_rendered_json_matches_jinja2():
    script = ROOT / "generation" / "tests" / "render_reference.py"
    r = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
