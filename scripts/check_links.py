"""Checks the local links and anchors of jdd's Markdown documentation (stdlib only).

    python scripts/check_links.py              # exit 1 and list every broken link
    python scripts/check_links.py --external   # also list the http(s) links (never fetched)

Files checked: README.md, docs/**/*.md, colabs/README.md, third_party/README.md (those that
exist). A link `[text](path#anchor)` is broken when `path` (relative to the linking file) does
not exist, or when `anchor` is not the slug of a heading of the target Markdown file. Slugs
follow GitHub's rules, so a link that passes here also works on GitHub: the heading's text
(inline code, emphasis and links reduced to their text) lower-cased, every character that is
not a letter, digit, `-`, `_` or space removed, spaces turned into `-`, and a repeated slug
suffixed `-1`, `-2`, ... Links inside fenced code blocks and inline code are not links.
External links are listed with --external but not fetched: jdd's machines have no internet.
"""

from __future__ import annotations

import argparse
import pathlib
import re
import sys
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC_GLOBS = ("README.md", "docs/**/*.md", "colabs/README.md", "third_party/README.md")

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target "optional title"); the text may hold nested brackets one level deep (images).
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def slugify(heading: str) -> str:
  """GitHub's anchor for a heading's Markdown text (without the duplicate suffix)."""
  text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images -> their text
  text = text.strip().lower()
  text = "".join(ch for ch in text if ch.isalnum() or ch in "-_ ")
  return text.replace(" ", "-")


def _prose_lines(text: str):
  """(line number, line) outside fenced code blocks, with inline code spans blanked."""
  fenced = False
  for number, line in enumerate(text.splitlines(), 1):
    if _FENCE.match(line):
      fenced = not fenced
      continue
    if not fenced:
      yield number, _INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)


def anchors(path: pathlib.Path) -> set[str]:
  """Every anchor a Markdown file defines: heading slugs (deduplicated as GitHub does) and
  explicit `<a name=...>` / `<a id=...>` anchors."""
  seen: dict[str, int] = {}
  out: set[str] = set()
  fenced = False
  for line in path.read_text(encoding="utf-8").splitlines():
    if _FENCE.match(line):
      fenced = not fenced
      continue
    if fenced:
      continue
    out.update(_HTML_ANCHOR.findall(line))
    m = _HEADING.match(line)
    if not m:
      continue
    slug = slugify(m.group(2))
    if slug in seen:
      seen[slug] += 1
      out.add(f"{slug}-{seen[slug]}")
    else:
      seen[slug] = 0
      out.add(slug)
  return out


def links(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, target) of every Markdown link of a file, outside code."""
  out = []
  for number, line in _prose_lines(path.read_text(encoding="utf-8")):
    out.extend((number, m.group(1)) for m in _LINK.finditer(line))
  return out


def doc_files(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
  files: list[pathlib.Path] = []
  for pattern in DOC_GLOBS:
    files.extend(p for p in sorted(root.glob(pattern)) if p.is_file() and p not in files)
  return files


def check(files, root: pathlib.Path = ROOT) -> tuple[list[str], list[str]]:
  """(broken-link messages, external links) over `files`."""
  broken, external = [], []
  cache: dict[pathlib.Path, set[str]] = {}
  for path in files:
    rel = path.relative_to(root) if path.is_relative_to(root) else path
    for number, target in links(path):
      if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # http:, https:, mailto:, ...
        if target.lower().startswith(("http://", "https://")):
          external.append(f"{rel}:{number}: {target}")
        continue
      file_part, _, anchor = target.partition("#")
      file_part = urllib.parse.unquote(file_part)
      dest = (path.parent / file_part).resolve() if file_part else path.resolve()
      if not dest.exists():
        broken.append(f"{rel}:{number}: {target}: no such file {file_part!r}")
        continue
      if anchor and dest.suffix.lower() == ".md":
        if dest not in cache:
          cache[dest] = anchors(dest)
        if urllib.parse.unquote(anchor).lower() not in cache[dest]:
          broken.append(f"{rel}:{number}: {target}: no heading with anchor #{anchor} in "
                        f"{dest.relative_to(root) if dest.is_relative_to(root) else dest}")
  return broken, external


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--external", action="store_true",
                      help="list the http(s) links too (they are not fetched)")
  parser.add_argument("files", nargs="*", type=pathlib.Path,
                      help="Markdown files to check (default: the documentation set)")
  args = parser.parse_args(argv)
  files = [p.resolve() for p in args.files] or doc_files()
  broken, external = check(files)
  if args.external:
    print(f"{len(external)} external link(s), not fetched:")
    for line in external:
      print("  " + line)
  for line in broken:
    print("BROKEN " + line)
  print(f"checked {len(files)} file(s): {len(broken)} broken local link(s)")
  return 1 if broken else 0


if __name__ == "__main__":
  sys.exit(main())
