"""Write README.md from nbs/index.ipynb with nbconvert's Markdown exporter (Quarto, which `nbdev_readme` needs, is not
installable here). Links in the notebook are relative to nbs/; the README's are relative to the repository root.
`python tools/readme.py` writes README.md; `--check` only says whether it is stale (exit 1)."""
import re, sys
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
HEADER = '<!-- Generated from nbs/index.ipynb by `make readme` (tools/readme.py): edit the notebook, not this file. -->\n\n'


def _link(m:re.Match)->str:
    "A link relative to nbs/ made relative to the root (`../x` -> `x`, `x` -> `nbs/x`); absolute ones unchanged"
    t = m.group(2)
    if re.match(r'[a-z]+:|#|/', t): return m.group(0)
    return f'{m.group(1)}({t[3:] if t.startswith("../") else "nbs/" + t})'


def render(nb_path:Path=ROOT/'nbs'/'index.ipynb')->str:
    "The README's text: markdown cells as written, code cells as python blocks without `#|` directives or `#| hide` cells"
    nb = nbformat.read(nb_path, as_version=4)
    keep = []
    for c in nb.cells:
        if c.cell_type == 'code':
            lines = c.source.splitlines()
            if any(re.match(r'#\|\s*hide\b', l) for l in lines): continue
            c.source = '\n'.join(l for l in lines if not l.startswith('#|')).strip('\n')
            c.outputs = []
        keep.append(c)
    nb.cells = keep
    nb.metadata['language_info'] = dict(name='python')   # fences code as ```python (nbdev_clean strips it from the notebook)
    body, _ = MarkdownExporter().from_notebook_node(nb)
    body = re.sub(r'(!?\[[^\]]*\])\(([^)\s]+)\)', _link, body)
    body = re.sub(r'\n{3,}', '\n\n', body).strip() + '\n'
    return HEADER + body


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    text, out = render(), ROOT/'README.md'
    if '--check' in argv:
        if out.read_text() != text:
            sys.exit('README.md is stale: it differs from what nbs/index.ipynb generates; run `make readme` and commit it')
        return
    out.write_text(text)


if __name__ == '__main__': main()
