"""The README is the front door: its commands must be the ones CI and newcomers actually run."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _ci_command() -> str:
    """The last non-comment line of .ci/run: the command CI runs after installing."""
    lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()]
    return [l for l in lines if l and not l.startswith("#")][-1]


def test_ci_runs_the_readme_test_command():
    """Guards against CI drifting from what the README tells a newcomer to run."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert _ci_command() in readme


def test_files_named_in_the_readme_tree_exist():
    """Guards against an annotated file tree that points at files which were renamed or removed."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    tree = readme.split("<!-- tree -->")[1].split("<!-- /tree -->")[0]
    names = re.findall(r"^[\s│├└─]*([\w./-]+\.(?:py|md|txt|jsonl|json|sh))\b", tree, flags=re.M)
    assert names, "the README's file tree should list files"
    missing = [n for n in names if not list(ROOT.rglob(Path(n).name))]
    assert not missing, f"files named in the README tree but absent: {missing}"


def test_requirements_list_exactly_the_run_time_dependencies():
    """Guards against a missing or drifting requirements.txt, which breaks the README's set-up command."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    names = {re.split(r"[=<>!~ ]", l.strip())[0].lower() for l in lines if l.strip() and not l.startswith("#")}
    assert names == {"torch", "numpy", "tqdm", "pytest"}
