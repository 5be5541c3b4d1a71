from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    """CI runs the README's test command verbatim, as a line of its own."""
    readme = (ROOT / "README.md").read_text()
    command = next(line for line in readme.splitlines()
                   if "pytest" in line and line.startswith("python3 -m venv"))
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()
