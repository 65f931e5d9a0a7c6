"""The README is the user's manual and docs/ holds the studies: its sections in order, every link resolves,
every study says its command, machine and commit."""

import re

import pytest

from helpers import ROOT

pytestmark = pytest.mark.unit

SECTIONS = [
    "Install",
    "Two commands",
    "Quickstart",
    "Tracking with W&B",
    "Configuration",
    "Outputs and resuming",
    "Evaluation sets and baselines",
    "Analysis and the dashboard",
    "Scaling out",
    "Tests and benchmark",
    "Docs",
]
STUDIES = ["default_run", "initialisation", "recipe_search", "tokens", "ood_suite", "task_diversity", "benchmark",
           "dynamics", "tasks", "model_families", "evaluation", "analysis"]  # fmt: skip


def test_the_readme_is_short_with_its_sections_in_order_and_a_figure_first():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    assert re.findall(r"^## (.+)$", text, re.MULTILINE) == SECTIONS
    first_section = text.index("\n## ")
    assert "![" in text[:first_section] and "**Contents:**" in text[:first_section]
    for section in SECTIONS:  # the table of contents links each section by its anchor
        anchor = re.sub(r"[^a-z0-9 -]", "", section.lower()).replace(" ", "-")
        assert f"(#{anchor})" in text, section


def test_every_link_and_figure_of_readme_and_docs_resolves():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_every_study_says_its_command_machine_and_commit_and_the_index_lists_it():
    index = (ROOT / "docs" / "index.md").read_text()
    for study in STUDIES:
        text = (ROOT / "docs" / f"{study}.md").read_text()
        for field in ("Command", "Machine"):
            assert re.search(rf"^- \*\*{field}s?:\*\* \S", text, re.MULTILINE), (study, field)
        assert re.search(r"^- \*\*Commits?:\*\* .*\b[0-9a-f]{7}\b", text, re.MULTILINE), study
        assert f"({study}.md)" in index


def test_pointers_from_code_and_configs_into_the_docs_resolve():
    """A `docs/<page>.md` named in code, configs, sweeps or scripts exists; a README section named there
    (README, "<section>") is one of its sections."""
    sections = set(re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), re.MULTILINE))
    for folder in ("icl_lr", "configs", "sweeps", "scripts", "bench"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in {".py", ".yaml", ".sh", ".sbatch"} or not path.is_file():
                continue
            text = path.read_text()
            for page in re.findall(r"docs/([\w.-]+\.md)", text):
                assert (ROOT / "docs" / page).exists(), f"{path.relative_to(ROOT)}: docs/{page}"
            for section in re.findall(r'README,? "([^"]+)"', text):
                assert section in sections, f"{path.relative_to(ROOT)}: README section {section!r}"
