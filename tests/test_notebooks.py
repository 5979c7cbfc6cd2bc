"Run every notebook under nbs/ as one pytest test (nbdev's tester, honouring tst_flags)."
import os
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.doclinks import nbglob
import nbdev.test as nbtest

cfg = get_config()
NBS = sorted(f for f in nbglob(cfg.nbs_path, as_path=True) if not (f.parent / '.notest').exists())
FORCE = os.environ.get('SALMON_TEST_FLAGS', '').split()   # e.g. "slow cuda" on a GPU machine

def test_found_notebooks():
    assert len(NBS) >= 2, f"expected notebooks under {cfg.nbs_path}, found {NBS}"

@pytest.mark.parametrize('fn', NBS, ids=[str(f.relative_to(cfg.nbs_path)) for f in NBS])
def test_notebook(fn):
    ok, secs = nbtest.test_nb(fn, skip_flags=[f for f in cfg.tst_flags.split() if f not in FORCE],
                              force_flags=FORCE, basepath=cfg.config_path)
    assert ok, f"notebook {fn.name} failed (see the traceback above)"
