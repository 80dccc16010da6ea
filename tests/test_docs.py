"""Checks on the documentation: README.md stays short, every relative link in README.md and
docs/ resolves (files and #anchors), and no file cites the private notes file that is not
in the repository. Standard library + pytest only; nothing here imports jaxlab.
"""
from __future__ import annotations

import pathlib
import re
import urllib.parse

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / 'README.md'
README_MAX_LINES = 250
SKIP_DIRS = {'.venv', '.git', 'runs', '__pycache__', '.pytest_cache'}
# The private notes file's name, built in two parts so that this file does not name it.
PRIVATE_NOTES = 'RESEARCH' + '_NOTES'
SCANNED = ('README.md', 'docs', 'jaxlab', 'experiments', 'bench', 'tests')


def markdown_files() -> list[pathlib.Path]:
  files = [README] if README.exists() else []
  docs = ROOT / 'docs'
  if docs.is_dir():
    files += sorted(p for p in docs.rglob('*.md') if not SKIP_DIRS & set(p.parts))
  return files


def _strip_fences(text: str) -> str:
  """Markdown with the lines of fenced code blocks blanked (headings there are not headings)."""
  out, fence = [], None
  for line in text.split('\n'):
    m = re.match(r'\s*(`{3,}|~{3,})', line)
    if fence is None and m:
      fence = m.group(1)[0] * len(m.group(1))
      out.append('')
      continue
    if fence is not None:
      if line.strip().startswith(fence):
        fence = None
      out.append('')
      continue
    out.append(line)
  return '\n'.join(out)


def _strip_code(text: str) -> str:
  """Markdown without fenced code blocks and inline code (links there are not links)."""
  return re.sub(r'(`+).*?\1', '', _strip_fences(text))


# [text](target) and ![alt](target); the text may hold one level of brackets.
_LINK = re.compile(r'!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]*)(?:\s+"[^"]*")?\s*\)')
_REF_DEF = re.compile(r'^\s{0,3}\[[^\]]+\]:\s*(\S+)', re.M)


def links(path: pathlib.Path) -> list[str]:
  text = _strip_code(path.read_text(encoding='utf-8'))
  found = [m.group(1).strip('<>') for m in _LINK.finditer(text)]
  found += _REF_DEF.findall(text)
  return found


def is_external(target: str) -> bool:
  return bool(re.match(r'^[a-zA-Z][a-zA-Z0-9+.-]*:', target)) or target.startswith('//')


def github_slug(heading: str) -> str:
  """GitHub's anchor for a heading: markup dropped, lowercase, punctuation other than
  '-' and '_' dropped, spaces -> '-'."""
  text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)   # links keep their text
  text = re.sub(r'<[^>]+>', '', text)                          # inline html
  text = text.strip().lower()
  text = re.sub(r'[^\w\- ]', '', text)                         # \w keeps '_' and letters
  return text.replace(' ', '-')


def anchors(path: pathlib.Path) -> set[str]:
  """Every anchor GitHub makes for the headings of a markdown file (duplicates get -1, -2)."""
  seen: dict[str, int] = {}
  out = set()
  for line in _strip_fences(path.read_text(encoding='utf-8')).split('\n'):
    m = re.match(r'^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$', line)
    if not m:
      continue
    slug = github_slug(m.group(2))
    n = seen.get(slug, 0)
    seen[slug] = n + 1
    out.add(slug if n == 0 else f'{slug}-{n}')
  return out


def test_slug_rule():
  assert github_slug('Benchmarks (compile-time estimates, not measurements)') == \
      'benchmarks-compile-time-estimates-not-measurements'
  assert github_slug('Ring attention over `mesh.context`') == 'ring-attention-over-meshcontext'
  assert github_slug('μP') == 'μp'
  assert github_slug('GPU: XLA flags and the device check') == 'gpu-xla-flags-and-the-device-check'
  assert github_slug('AdamP / SGDP') == 'adamp--sgdp'


def test_readme_is_short():
  assert README.exists(), 'README.md is missing'
  n = len(README.read_text(encoding='utf-8').splitlines())
  assert n <= README_MAX_LINES, f'README.md has {n} lines; at most {README_MAX_LINES}'


def test_docs_exist():
  assert (ROOT / 'docs').is_dir(), 'docs/ is missing'
  assert len(markdown_files()) > 1


def _check_links(check_anchors: bool) -> list[str]:
  problems = []
  for md in markdown_files():
    for target in links(md):
      if not target or is_external(target):
        continue
      path_part, _, anchor = target.partition('#')
      path_part = urllib.parse.unquote(path_part)
      dest = (md.parent / path_part).resolve() if path_part else md
      where = f'{md.relative_to(ROOT)}: ({target})'
      if not check_anchors:
        if not dest.exists():
          problems.append(f'{where}: no such file {dest}')
        continue
      if not anchor or not dest.exists() or dest.suffix.lower() != '.md' or dest.is_dir():
        continue
      anchor = urllib.parse.unquote(anchor).lower()
      if anchor not in anchors(dest):
        problems.append(f'{where}: no heading of {dest.relative_to(ROOT)} has the anchor '
                        f'#{anchor}')
  return problems


def test_relative_links_resolve():
  problems = _check_links(check_anchors=False)
  assert not problems, 'broken links:\n' + '\n'.join(problems)


def test_anchors_match_headings():
  problems = _check_links(check_anchors=True)
  assert not problems, 'broken anchors:\n' + '\n'.join(problems)


def _scanned_files():
  for name in SCANNED:
    top = ROOT / name
    if top.is_file():
      yield top
    elif top.is_dir():
      for p in sorted(top.rglob('*')):
        if p.is_file() and not SKIP_DIRS & set(p.relative_to(ROOT).parts):
          yield p


def test_no_private_notes_cited():
  needle = PRIVATE_NOTES.encode()
  hits = [str(p.relative_to(ROOT)) for p in _scanned_files() if needle in p.read_bytes()]
  assert not hits, (f'these files cite {PRIVATE_NOTES}.md, which is not in the repository '
                    '(cite the paper or repository in docs/ instead):\n' + '\n'.join(hits))
