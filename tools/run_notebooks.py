"Execute notebooks in place with their outputs (the committed paper notebooks), then clean them as nbdev does"
import argparse, os, sys
from pathlib import Path

os.environ.setdefault('TQDM_DISABLE', '1')                 # no progress bars in committed outputs
os.environ.setdefault('HF_HUB_DISABLE_PROGRESS_BARS', '1')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
os.environ.pop('IN_TEST', None)                            # the notebooks' real preset, not the test one

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from nbdev.clean import nbdev_clean


SKIP = ('#| cuda', '#| net')   # cells that need a GPU or the hub keep no output here


def run(fn:Path):
    "Execute notebook `fn` in its own folder; stderr is printed here and left out of the saved notebook"
    nb = read_nb(fn)
    for c in nb.cells:
        if c.cell_type == 'code' and c.source.lstrip().startswith(SKIP): c['skip'] = True
    cwd = os.getcwd()
    os.chdir(fn.parent)
    try: CaptureShell(mpl_format='png').run_all(nb, exc_stop=True, preproc=lambda c: c.get('skip', False))
    finally: os.chdir(cwd)
    for i, c in enumerate(nb.cells):
        c.pop('skip', None)
        err = [o for o in c.get('outputs', []) if o.get('name') == 'stderr']
        for o in err: print(f'{fn.name} cell {i} stderr: {"".join(o["text"])[:300]}', file=sys.stderr)
        if err: c['outputs'] = [o for o in c['outputs'] if o.get('name') != 'stderr']
    write_nb(nb, fn)
    print(f'executed {fn}')


if __name__ == '__main__':
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('notebooks', nargs='+', type=Path, help='notebooks to execute, e.g. nbs/paper/*.ipynb')
    args = ap.parse_args()
    for fn in args.notebooks: run(fn.resolve())
    sys.argv = sys.argv[:1]                                # nbdev_clean parses the command line
    nbdev_clean()
