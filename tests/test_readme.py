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
    missing = [n for n in names if not (ROOT / n).is_file()]  # the path as written, not a file of that name anywhere
    assert not missing, f"files named in the README tree but absent: {missing}"


def test_requirements_list_exactly_the_run_time_dependencies():
    """Guards against a missing or drifting requirements.txt, which breaks the README's set-up command."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    names = {re.split(r"[=<>!~ ]", l.strip())[0].lower() for l in lines if l.strip() and not l.startswith("#")}
    assert names == {"torch", "numpy", "tqdm", "pytest"}


def test_the_readme_stages_are_the_commands_run_demo_runs():
    """Guards against the README's stage-by-stage commands drifting from run_demo.py (a student who
    follows the README must train exactly what the demo trains)."""
    import shlex

    from run_demo import demo_stages

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- stages -->")[1].split("<!-- /stages -->")[0]
    commands = [shlex.split(line.split("  #")[0]) for line in block.splitlines() if line.startswith("python ")]
    assert commands == [["python", *command] for _, command in demo_stages("out")]


def test_the_readme_stays_a_front_door():
    """Guards against the README growing back into a manual (it was 1,150 lines): depth goes to docs/."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_every_relative_link_in_the_readme_and_docs_resolves():
    """Guards against links to pages, files or sections that were renamed or moved."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(encoding="utf-8"), flags=re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
                if anchor not in slugs:
                    broken.append(f"{page.name}: {target}")
    assert not broken, broken
