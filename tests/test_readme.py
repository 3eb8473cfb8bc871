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


def _pins(name) -> dict:
    """{package: version} of a requirements-style file's `name==version` lines (lower-case names)."""
    lines = (ROOT / name).read_text().splitlines()
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            package, sep, version = line.partition("==")
            assert sep and version, f"{name}: {line!r} is not pinned to one version (package==version)"
            pins[package.strip().lower()] = version.strip()
    return pins


def test_requirements_pin_exactly_the_run_time_dependencies():
    """Guards against a missing or loose requirements.txt: `pytest>=8.0` let a fresh install resolve
    pytest 9.2, which failed tests that CI (with an older pytest already installed) passed."""
    direct = _pins("requirements.txt")
    assert set(direct) == {"torch", "numpy", "tqdm", "pytest"}
    assert "-c constraints.txt" in (ROOT / "requirements.txt").read_text().splitlines()
    locked = _pins("constraints.txt")
    assert all(locked.get(name) == version for name, version in direct.items()), (direct, locked)


def test_ci_installs_into_a_fresh_virtual_environment():
    """Guards against CI installing into the machine's own Python, where packages already present
    hide what a newcomer's fresh install resolves."""
    lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.strip() and not l.strip().startswith("#")]
    made = next(i for i, l in enumerate(lines) if l.startswith("python -m venv"))
    activated = next(i for i, l in enumerate(lines) if "bin/activate" in l)
    assert made < activated < lines.index(_ci_command())


def test_the_readme_stages_are_the_commands_run_demo_runs():
    """Guards against the README's stage-by-stage commands drifting from what run_demo.py runs, demo.py's
    stages (a student who follows the README must train exactly what the demo trains)."""
    import shlex

    from demo import demo_stages

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
                content = file.read_text(encoding="utf-8")
                headings = re.findall(r"^#+ (.+)$", content, flags=re.M)
                slugs = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}
                slugs |= set(re.findall(r'<a id="([^"]+)"></a>', content))  # an anchor set by hand (the lab's claims)
                if anchor not in slugs:
                    broken.append(f"{page.name}: {target}")
    assert not broken, broken
