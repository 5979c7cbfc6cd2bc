"The Colab install cell of every paper notebook installs the one pinned salmon, and the notebook prints which salmon runs."
import configparser, json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PIN_FILE = 'colab-requirements.txt'


def test_pin_names_this_version():
    version = configparser.ConfigParser(delimiters=['=']); version.read(ROOT/'settings.ini')
    pins = [l for l in (ROOT/PIN_FILE).read_text().splitlines() if l.strip() and not l.startswith('#')]
    assert len(pins) == 1 and re.fullmatch(r'salmon\[demo\] @ git\+https://github\.com/salmon-sae/salmon@\S+', pins[0]), pins
    assert pins[0].endswith('@v' + version['DEFAULT']['version']), f'{PIN_FILE} pins {pins[0]!r}, settings.ini is at {version["DEFAULT"]["version"]}'


def test_paper_notebooks_install_the_pin_and_print_it():
    nbs = sorted((ROOT/'nbs'/'paper').glob('*.ipynb'))
    assert nbs
    for f in nbs:
        code = [''.join(c['source']) for c in json.loads(f.read_text())['cells'] if c['cell_type'] == 'code']
        installs = [c for c in code if 'pip' in c and 'install' in c]
        assert len(installs) == 1 and f'salmon/main/{PIN_FILE}' in installs[0] and 'git+' not in installs[0], f.name
        assert any('print(salmon_source())' in c for c in code), f'{f.name} does not print which salmon it runs'
