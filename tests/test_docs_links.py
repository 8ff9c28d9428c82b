"""Every Markdown file the repository's text names must be a file in the repository.

Docstrings, comments and docs cite pages such as `docs/a1111-semantics.md, "Seeds"`. A
name that resolves to nothing (a page kept outside the repository, a renamed or deleted
page) leaves a reader of a clone with nothing to follow, so `broken_references` lists
every such name as `file:line: name`. A name resolves when it exists relative to the
repository root, to `docs/`, or to the folder of the file that names it (so a bare
`README.md` inside `extensions/x/` means the one next to it). A section quoted right
after a `docs/` page (`docs/page.md, "Heading"` or `..., "A" and "B"`) must be a heading
of that page, or the start of one.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = (".py", ".md", ".js", ".ipynb", ".toml")
SKIPPED_DIRS = (".git",)
SELF = "tests/test_docs_links.py"

MD_NAME = re.compile(r"(?<![\w./-])[\w./-]*[\w-]\.md\b")
SECTION_REF = re.compile(
    r"(docs/[\w./-]+\.md),\s*(?:#\s*)?((?:\"[^\"\n]+\"(?:,\s*(?=\")|\s+and\s+(?=\"))?)+)")
QUOTED = re.compile(r"\"([^\"\n]+)\"")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)

# Names that are not references to a document, so nothing in the repository can match
# them. Each entry says why; prefer rewording a reference over adding one here.
NOT_REFERENCES = {
    # the training-folder fixture writes a stray `notes.md` to check non-images are skipped
    ("tests/test_api_training.py", "notes.md"),
}


def repo_text_files(root: Path) -> list[Path]:
    """The text files to scan: git's tracked and unignored files, else a walk."""
    if (root / ".git").exists():
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=root, capture_output=True, check=True).stdout.decode()
        names = [name for name in out.split("\0") if name]
    else:
        names = []
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.startswith(".venv")]
            rel = Path(folder).relative_to(root)
            names += [str(rel / name) for name in files]
    return sorted(root / name for name in names
                  if name.endswith(TEXT_SUFFIXES) and not name.startswith(".venv")
                  and (root / name).is_file())


def resolve(root: Path, source: Path, name: str) -> Path | None:
    """The file a Markdown name means, or None when it names nothing here."""
    for base in (root, root / "docs", source.parent):
        candidate = (base / name).resolve()
        if candidate.is_file() and candidate.is_relative_to(root.resolve()):
            return candidate
    return None


def headings(page: Path) -> list[str]:
    return [match.group(1).strip() for match in HEADING.finditer(page.read_text("utf-8"))]


def has_section(page: Path, section: str) -> bool:
    """A heading equal to `section`, or starting with it before a non-word character."""
    return any(title == section
               or title.startswith(section) and not title[len(section)].isalnum()
               for title in headings(page))


def broken_references(root: Path, files: list[Path] | None = None) -> list[str]:
    """`file:line: problem` for every Markdown name or quoted section that resolves nowhere."""
    problems = []
    for path in files if files is not None else repo_text_files(root):
        rel = path.relative_to(root).as_posix()
        if rel == SELF:
            continue  # this file quotes made-up names on purpose
        text = path.read_text("utf-8", errors="replace")
        for match in MD_NAME.finditer(text):
            name = match.group(0)
            line_start = text.rfind("\n", 0, match.start()) + 1
            token_start = max(text.rfind(ch, line_start, match.start()) for ch in " \t\"'`(<[")
            if "://" in text[token_start + 1:match.end()] or (rel, name) in NOT_REFERENCES:
                continue
            if resolve(root, path, name) is None:
                line = text.count("\n", 0, match.start()) + 1
                problems.append((rel, line, f"{name} is not a file in the repository"))
        for match in SECTION_REF.finditer(text):
            page = resolve(root, path, match.group(1))
            if page is None:
                continue  # already reported above
            line = text.count("\n", 0, match.start()) + 1
            for section in QUOTED.findall(match.group(2)):
                if not has_section(page, section):
                    problems.append((rel, line, f"{match.group(1)} has no section {section!r}"))
    return [f"{rel}:{line}: {what}" for rel, line, what in sorted(problems)]


def test_every_markdown_name_in_the_repository_resolves() -> None:
    problems = broken_references(REPO)
    assert not problems, "Markdown names that resolve nowhere:\n" + "\n".join(problems)


def test_checker_reports_made_up_names_and_sections(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "guide.md").write_text("# Guide\n\n## Seeds (`modules/seeds.py`)\n")
    (tmp_path / "extensions" / "x").mkdir(parents=True)
    (tmp_path / "extensions" / "x" / "README.md").write_text("# x\n")
    (tmp_path / "extensions" / "x" / "main.py").write_text(
        '"""See README.md and guide.md; docs/guide.md, "Seeds" is fine."""\n')
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "lib.py").write_text("# outside.md is not ours to check\n")
    (tmp_path / "mod.py").write_text(
        "# docs/guide.md, \"Seeds\" and \"Samplers\"\n"
        "# https://example.com/remote.md is a web address\n"
        "# see a1111.md §e, and\n"
        "# docs/guide.md,\n# \"Hashes\"\n")
    assert broken_references(tmp_path) == [
        "mod.py:1: docs/guide.md has no section 'Samplers'",
        "mod.py:3: a1111.md is not a file in the repository",
        "mod.py:4: docs/guide.md has no section 'Hashes'",
    ]
