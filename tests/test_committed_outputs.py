"What a researcher opening the committed notebooks in JupyterLab meets: a stable kernel, no noise, nothing the sanitizer strips"
import json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).parents[1]
NBS = sorted(p for p in (ROOT/'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
ids = [str(p.relative_to(ROOT/'nbs')) for p in NBS]


@pytest.mark.parametrize('fn', NBS, ids=ids)
def test_committed_outputs(fn):
    nb = json.loads(fn.read_text())
    # JupyterLab writes the kernelspec of the kernel it runs; `make lab` installs one named salmon
    assert nb['metadata'].get('kernelspec') == dict(display_name='salmon', language='python', name='salmon'), nb['metadata']
    assert set(nb['metadata']) <= {'kernelspec'}, f'{fn.name}: metadata beyond the kernelspec is not stable under save: {nb["metadata"]}'
    for i, c in enumerate(nb['cells']):
        for o in c.get('outputs', []):
            where = f'{fn.name} cell {i}'
            assert o.get('name') != 'stderr', f'{where}: stderr output committed: {"".join(o.get("text", ""))[:200]!r}'
            text = ''.join(o.get('text', ''))
            assert not re.search(r'\d+it/s\]|\|#+|\r', text), f'{where}: a progress bar in a committed output: {text[:200]!r}'
            html = ''.join(o.get('data', {}).get('text/html', ''))
            assert '<svg' not in html, f'{where}: inline <svg> in an HTML output (JupyterLab strips it from untrusted notebooks)'
            assert '<script' not in html, f'{where}: a <script> in an HTML output (never runs in an untrusted notebook)'


@pytest.mark.parametrize('fn', NBS, ids=ids)
def test_source_lines_split(fn):
    "JupyterLab saves a cell's source one line per string: a string holding several lines would change on open-and-save"
    for i, c in enumerate(json.loads(fn.read_text())['cells']):
        src = c['source'] if isinstance(c['source'], list) else [c['source']]
        bad = [s for s in src if '\n' in s[:-1]]
        assert not bad, f'{fn.name} cell {i}: a source string holds several lines: {bad[0][:120]!r}'
