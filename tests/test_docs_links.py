"""The documentation's local links and anchors resolve (scripts/check_links.py), and the slug
function follows GitHub's rules, so a link that passes here works on GitHub too."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_links", ROOT / "scripts" / "check_links.py")
check_links = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_links)


def test_slugify_github_rules():
  assert check_links.slugify("Deliberate differences from the reference code") == (
      "deliberate-differences-from-the-reference-code")
  assert check_links.slugify("SRe2L in jdd") == "sre2l-in-jdd"
  # punctuation is dropped, '-' and '_' are kept, inline code reduces to its text
  assert check_links.slugify("`convert_torch`: the checkpoint layouts it reads") == (
      "convert_torch-the-checkpoint-layouts-it-reads")
  assert check_links.slugify("MTT-VL, LoRS, RepBlend (exact & TESLA)") == (
      "mtt-vl-lors-repblend-exact--tesla")
  assert check_links.slugify("Measured: Fashion-MNIST, offline (2 shared CPU cores)") == (
      "measured-fashion-mnist-offline-2-shared-cpu-cores")
  assert check_links.slugify("See [the card](x.md#y) now") == "see-the-card-now"


def test_duplicate_headings_get_suffixes(tmp_path):
  page = tmp_path / "a.md"
  page.write_text("# Title\n## Setup\n```\n## Not a heading\n```\n## Setup\n## Setup\n")
  assert check_links.anchors(page) == {"title", "setup", "setup-1", "setup-2"}


def test_checker_finds_broken_files_and_anchors(tmp_path):
  (tmp_path / "b.md").write_text("# B page\n## Part two\n")
  page = tmp_path / "a.md"
  page.write_text(
      "# A\n[ok](b.md) [ok](b.md#part-two) [ok](#a) [web](https://example.org)\n"
      "[gone](c.md) [bad anchor](b.md#part-three) `[code](nope.md)`\n"
      "```\n[fenced](nope.md)\n```\n")
  broken, external = check_links.check([page], root=tmp_path)
  assert len(broken) == 2, broken
  assert "c.md" in broken[0] and "#part-three" in broken[1]
  assert external == ["a.md:2: https://example.org"]


def test_documentation_has_no_broken_links():
  files = check_links.doc_files()
  assert any(p.name == "README.md" and p.parent == ROOT for p in files)
  assert any(p.parent.name == "docs" for p in files)
  broken, _ = check_links.check(files)
  assert not broken, "broken links:\n" + "\n".join(broken)
