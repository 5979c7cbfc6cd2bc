"""Fault injection on the tiny pipeline, each run a separate `python` process like a user's:

- kill -9 at seeded random instants spread over every stage (startup, each cache, each SAE group and its checkpoints, each
  table); every rerun completes with no manual step, and the tables and SAE weights equal an uninterrupted run's exactly;
- one artefact of each kind damaged (cache shard, cache manifest, checkpoint, SAE weights, SAE group record, stage table):
  each is named by path, recomputed, and the result is again identical;
- stale reuse: one setting changed per stage; exactly the stages that depend on it are recomputed, and `on_stale='error'`
  stops naming the setting.

These are the slowest tests of the suite (a few minutes on a 2-core machine: about ten tiny-pipeline runs)."""
import json, os, random, shutil, signal, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest

pytestmark = pytest.mark.faults   # minutes, not seconds; CI runs them (`-m 'not faults'` skips them locally)
ROOT = Path(__file__).resolve().parents[1]
TIMING = {'seconds', 'tok_per_s', 'reused'}      # wall-clock columns: the only ones allowed to differ between runs
DRIVER = """
import dataclasses, json, os, sys, warnings
from salmon.pipeline import get_preset, run
p = dataclasses.replace(get_preset('tiny'), **json.loads(os.environ.get('SALMON_TEST_OVERRIDES') or '{}'))
run(p, sys.argv[1], progress=False, on_stale=sys.argv[2])
"""


def _env(**extra):
    env = {**os.environ, 'PYTHONPATH': str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''), 'PYTHONWARNINGS': 'always',
           'HF_HUB_OFFLINE': '1', 'HF_DATASETS_OFFLINE': '1', 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    env.pop('IN_TEST', None)
    env.update(extra)
    return env


def _start(out:Path, on_stale='error', **extra):
    return subprocess.Popen([sys.executable, '-c', DRIVER, str(out), on_stale], cwd=ROOT, env=_env(**extra),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _run(out:Path, on_stale='error', **extra)->str:
    "One complete pipeline run; its output (it must succeed)"
    p = _start(out, on_stale, **extra); log, _ = p.communicate(timeout=1800)
    assert p.returncode == 0, f'run failed (rc {p.returncode}):\n{log[-4000:]}'
    return log


def _actions(out:Path)->dict:
    return {a['artefact'].split('/tiny/', 1)[1]: a['action'] for a in json.loads((out/'tiny'/'run.json').read_text())['artefacts']}


def _tables(out:Path)->dict:
    d = out/'tiny'
    return {str(f.relative_to(d)): pd.read_csv(f).drop(columns=list(TIMING), errors='ignore')
            for f in sorted(d.rglob('*.csv')) if 'saes' not in f.parts}


def _weights(out:Path)->dict:
    d = out/'tiny'
    return {str(f.relative_to(d)): f.read_bytes() for f in sorted((d/'saes').rglob('sae.safetensors'))}


def _same_as(ref:Path, out:Path):
    a, b = _tables(ref), _tables(out)
    assert sorted(a) == sorted(b)
    for k in a: pd.testing.assert_frame_equal(a[k], b[k], check_exact=True, obj=k)
    wa, wb = _weights(ref), _weights(out)
    assert sorted(wa) == sorted(wb) and all(wa[k] == wb[k] for k in wa), 'SAE weights differ from the uninterrupted run'


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    "An uninterrupted run"
    out = tmp_path_factory.mktemp('reference')
    _run(out)
    return out


# --- kill -9 at random instants -------------------------------------------------------------------------------------------

def _marker(d:Path, kind:str)->bool:
    "Whether the run has reached the stage `kind` (seen from the files it writes)"
    t = d/'tiny'
    if kind == 'startup': return True
    if kind.startswith('cache:'): return any((t/'cache'/kind[6:]).glob('*'))
    if kind.startswith('train:'): return (t/'saes'/kind[6:]/'F256'/'provenance.json').exists()
    if kind.startswith('ckpt:'): return len(list((t/'saes'/kind[5:]/'F256'/'checkpoints').glob('step_*'))) >= 2
    return (t/kind).exists() or Path(str(t/kind) + '.stamp.json').exists()


# (stage the kill aims at, longest random delay after the stage is seen, in seconds)
STAGES = [('startup', 6.0), ('cache:medical-train', 1.0), ('cache:general-train', 1.0), ('cache:general-test', 0.5),
          ('train:domain', 3.0), ('ckpt:domain', 0.5), ('train:broad', 3.0), ('ckpt:broad', 2.0), ('eval/medical-test.csv', 2.0),
          ('darkmatter.csv', 1.0), ('specificity.csv', 4.0), ('absorption.csv', 0.3)]


def test_kill9_anywhere_then_rerun_completes_identically(reference, tmp_path):
    rng = random.Random(17)
    out = tmp_path/'killed'; out.mkdir()
    kills, log = [], []
    for stage, delay in STAGES:
        p = _start(out)
        t0 = time.monotonic()
        while not _marker(out, stage) and p.poll() is None: time.sleep(0.02)
        when = rng.uniform(0, delay); time.sleep(when)
        if p.poll() is None:
            p.send_signal(signal.SIGKILL); p.wait()
            kills.append((stage, round(time.monotonic() - t0, 2)))
        else: log.append(f'{stage}: the run finished before the kill ({p.returncode})')
        p.stdout.close()
    print(f'{len(kills)} kills:', kills, *log, sep='\n  ')
    assert len(kills) >= 10, kills
    _run(out)                                                        # no manual step in between
    _same_as(reference, out)
    assert not list((out/'tiny'/'saes').rglob('checkpoints')), 'checkpoints left behind after the SAEs were saved'


# --- damaged artefacts ----------------------------------------------------------------------------------------------------

def _zero(f:Path): f.write_bytes(bytes(f.stat().st_size))
def _cut(f:Path): f.write_bytes(f.read_bytes()[:-40])


def test_damaged_artefacts_are_named_and_recomputed(reference, tmp_path):
    out = tmp_path/'damaged'; shutil.copytree(reference, out)
    t = out/'tiny'
    damage = [  # (what, file, how, the artefact run.json must show recomputed)
        ('cache shard (zeroed)', t/'cache'/'medical-test'/'shard_00000.safetensors', _zero, 'cache/medical-test'),
        ('cache manifest (invalid JSON)', t/'cache'/'general-test'/'manifest.json', lambda f: f.write_text('{"shards": ['), 'cache/general-test'),
        ('SAE weights (cut)', t/'saes'/'broad'/'F256'/'broad-F256-l0_16'/'sae.safetensors', _cut, 'saes/broad/F256'),
        ('SAE group record (invalid JSON)', t/'saes'/'domain'/'F256'/'provenance.json', lambda f: f.write_text('{'), 'saes/domain/F256'),
        ('table (last row cut)', t/'darkmatter.csv', lambda f: f.write_text(''.join(f.read_text().splitlines(True)[:-1])), 'darkmatter.csv'),
    ]
    for what, f, how, artefact in damage:
        how(f)
        log = _run(out)
        assert str(f) in log or str(f.parent) in log, f'{what}: {f} is not named in the output:\n{log[-3000:]}'
        assert _actions(out)[artefact] == 'recomputed', (what, _actions(out))
        _same_as(reference, out)
    # a checkpoint: kill a retraining run once it has two checkpoints, damage the newest, resume
    shutil.rmtree(t/'saes'/'domain')
    p = _start(out)
    while len(list((t/'saes'/'domain'/'F256'/'checkpoints').glob('step_*'))) < 2 and p.poll() is None: time.sleep(0.02)
    p.send_signal(signal.SIGKILL); p.wait(); p.stdout.close()
    newest = sorted((t/'saes'/'domain'/'F256'/'checkpoints').glob('step_*'))[-1]/'sae_0.safetensors'
    _zero(newest)
    log = _run(out)
    assert str(newest) in log and 'falling back to the previous checkpoint' in log, log[-3000:]
    _same_as(reference, out)
    print(f'{len(damage) + 1} kinds of damage detected by path and recomputed')


# --- stale reuse ------------------------------------------------------------------------------------------------------------

ALL = {'cache/medical-train', 'cache/medical-test', 'cache/general-train', 'cache/general-test', 'saes/domain/F256', 'saes/broad/F256',
       'eval/medical-test.csv', 'eval/general-test.csv', 'darkmatter.csv', 'specificity.csv', 'absorption.csv'}
TABLES = {'eval/medical-test.csv', 'eval/general-test.csv', 'darkmatter.csv', 'specificity.csv', 'absorption.csv'}
CHANGES = [  # (stage, setting changed, the artefacts that depend on it)
    ('caches (held-out)', dict(eval_texts=5), {'cache/medical-test', 'cache/general-test', 'eval/medical-test.csv', 'eval/general-test.csv',
                                               'darkmatter.csv', 'specificity.csv'}),
    ('SAEs', dict(lr=2e-3), {'saes/domain/F256', 'saes/broad/F256', *TABLES}),
    ('evaluation', dict(eval_max_len=80), {'eval/medical-test.csv', 'eval/general-test.csv', 'specificity.csv'}),
    ('absorption', 'concepts', {'absorption.csv'}),
]


@pytest.mark.parametrize('stage,change,dependent', CHANGES, ids=[c[0] for c in CHANGES])
def test_stale_reuse_recomputes_exactly_the_dependents(reference, tmp_path, stage, change, dependent):
    out = tmp_path/'stale'; shutil.copytree(reference, out)
    if change == 'concepts':                                           # the absorption stage's input file
        data = tmp_path/'data'; shutil.copytree(ROOT/'data', data)
        f = data/'medical_concepts.json'; f.write_text(f.read_text() + '\n')   # same concepts, other bytes: a new input all the same
        extra = dict(SALMON_DATA=str(data))
    else: extra = dict(SALMON_TEST_OVERRIDES=json.dumps(change))
    p = _start(out, 'error', **extra); log, _ = p.communicate(timeout=1800)   # default: stop, naming what changed
    assert p.returncode != 0 and 'StaleArtefactError' in log and "--on-stale recompute" in log, log[-3000:]
    if change != 'concepts': assert f'{next(iter(change))} ' in log.split('StaleArtefactError')[-1], log[-2000:]
    _run(out, 'recompute', **extra)
    acts = _actions(out)
    assert {k for k, v in acts.items() if v != 'reused'} == dependent, acts
    assert {k for k, v in acts.items() if v == 'reused'} == ALL - dependent, acts
    _run(out, 'error', **extra)                                        # and now all of it is reused
    assert set(_actions(out).values()) == {'reused'}
