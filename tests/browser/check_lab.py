"""JupyterLab as a researcher meets it, in a real browser (`make browser-test`; not collected by pytest).

Starts JupyterLab on 127.0.0.1 with a fresh Jupyter config/data folder (so every notebook opens untrusted), drives
Debian's chromium through Playwright (its own browser download is not used) and checks:

1. every paper notebook renders untrusted: each committed image is displayed, each feature card keeps its
   histogram and shaded tokens, no HTML element or style is sanitized away;
2. a live `FeatureBrowser` on the tiny preset: ▶ changes the card, a search shows a hit count and selects its
   first hit, picking another hit changes the card; its controls stay inside the page at 1280×800;
3. open-then-save of every committed notebook leaves `git status` clean;
4. no JavaScript error other than failed (offline) network requests.

Screenshots go to results/browser/ (not committed). Exit status 0 when everything passes."""
import argparse, html.parser, json, os, re, secrets, shlex, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT/'results'/'browser'
CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-sync',
                  '--disable-background-networking', '--disable-component-update']
OFFLINE = re.compile(r'Failed to load resource|net::ERR_|ERR_NAME_NOT_RESOLVED|ERR_CONNECTION|ERR_INTERNET_DISCONNECTED')

FB_CELLS = ['''# built by tests/browser/check_lab.py: a live FeatureBrowser on the tiny preset
from salmon.pipeline import get_preset, prepare, load_model
from salmon.data import medical_qa
from salmon.stats import latent_stats
from salmon.cards import FeatureBrowser
P = get_preset('tiny')
saes = prepare(P, progress=False)
lm = load_model(P)
a = next(n for n in sorted(saes) if n.startswith('domain-')); b = next(n for n in sorted(saes) if n.startswith('broad-'))
st = latent_stats({a: saes[a], b: saes[b]}, lm, medical_qa('test', source=P.source), P.layer, max_len=P.max_len, bos=P.bos)''',
            'fb = FeatureBrowser(st[a], saes[a], lm, other=st[b], other_sae=saes[b])\nfb']


class Tags(html.parser.HTMLParser):
    "Counts of start tags and of elements with a style attribute in an HTML string"
    def __init__(self, src:str):
        super().__init__(); self.tags, self.styled = {}, 0
        self.feed(src)
    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.styled += any(k == 'style' and v for k, v in attrs)


def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def start_lab(lab_args:str, tmp:Path)->tuple:
    "JupyterLab serving the repository root with fresh config/data/runtime folders; (process, base url, token)"
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp/'config'), JUPYTER_DATA_DIR=str(tmp/'data'),
               JUPYTER_RUNTIME_DIR=str(tmp/'runtime'), PYTHONUNBUFFERED='1')
    env.pop('JUPYTERLAB_WORKSPACES_DIR', None)
    us = tmp/'config'/'lab'/'user-settings'/'@jupyterlab'
    # every cell in the DOM (no windowing), no news or update checks (offline)
    for rel, val in [('notebook-extension/tracker.jupyterlab-settings', {'windowingMode': 'none'}),
                     ('apputils-extension/notification.jupyterlab-settings', {'fetchNews': 'false', 'checkForUpdates': False})]:
        (us/rel).parent.mkdir(parents=True, exist_ok=True); (us/rel).write_text(json.dumps(val))
    cmd = [sys.executable, '-m', 'jupyter', 'lab', *shlex.split(lab_args), '--no-browser', f'--ServerApp.port={port}',
           f'--IdentityProvider.token={token}', f'--ServerApp.root_dir={ROOT}', '--ServerApp.port_retries=0', *(['--allow-root'] if os.geteuid() == 0 else []),
           '--LabApp.news_url=None', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate']
    log = open(tmp/'lab.log', 'w')
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f'http://127.0.0.1:{port}'
    for _ in range(240):
        try:
            urllib.request.urlopen(f'{base}/api/status?token={token}', timeout=2); return proc, base, token
        except OSError: time.sleep(0.5)
        if proc.poll() is not None: break
    proc.kill(); raise RuntimeError(f'JupyterLab did not start; its log:\n{(tmp/"lab.log").read_text()[-3000:]}')


def api(base:str, token:str, path:str, method:str='GET'):
    req = urllib.request.Request(f'{base}{path}', method=method, headers={'Authorization': f'token {token}'})
    with urllib.request.urlopen(req, timeout=30) as r: return json.loads(r.read() or b'null')


def output_counts(nb:dict)->dict:
    "What the committed outputs of a notebook should render: outputs, images, HTML tags, styled elements, cards"
    n = dict(outputs=0, images=0, cards=0, styled=0, tags={})
    for c in nb['cells']:
        outs = c.get('outputs', [])
        # JupyterLab shows consecutive stream outputs of one name as one
        n['outputs'] += sum(1 for i, o in enumerate(outs) if not (o.get('output_type') == 'stream' and i and
                                                                   outs[i - 1].get('output_type') == 'stream' and outs[i - 1].get('name') == o.get('name')))
        for o in outs:
            d = o.get('data', {})
            n['images'] += sum(k.startswith('image/') for k in d)
            if 'text/html' in d:
                h = ''.join(d['text/html']); t = Tags(h)
                n['styled'] += t.styled; n['cards'] += h.count('salmon-card')
                for k, v in t.tags.items(): n['tags'][k] = n['tags'].get(k, 0) + v
    n['tags'].pop('style', None)    # pandas' scoped <style> block: cosmetic CSS JupyterLab drops from every untrusted output
    return n


DOM_COUNTS = '''() => {
  const outs = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')];
  const html = outs.filter(o => o.classList.contains('jp-RenderedHTMLCommon'));
  const tags = {}; let styled = 0;
  for (const h of html) for (const el of h.querySelectorAll('*')) {
    const t = el.tagName.toLowerCase(); tags[t] = (tags[t] || 0) + 1;
    if ((el.getAttribute('style') || '').trim()) styled++; }
  const imgs = outs.flatMap(o => [...o.querySelectorAll('img')]);
  const cards = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .salmon-card')];
  return {images: imgs.filter(i => !i.closest('.salmon-card')).length,
          broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length,
          cards: cards.length,
          card_hist: cards.filter(c => [...c.querySelectorAll('img.salmon-hist')].some(i => i.complete && i.naturalWidth > 0)).length,
          card_shaded: cards.filter(c => [...c.querySelectorAll('span')].some(
              s => getComputedStyle(s).backgroundColor.startsWith('rgba(230, 90, 20'))).length,
          svg_text: html.filter(h => /activations\\s*\\d(\\.\\d+)?e[+-]\\d\\d\\d(\\.\\d+)?e[+-]\\d\\d/.test(h.innerText)).length,
          tags, styled};
}'''


def open_nb(page, base:str, token:str, rel:str, n_outputs:int=0):
    "Load JupyterLab with only `rel` open (a fresh workspace), its outputs rendered and its kernel idle"
    page.goto(f'{base}/lab/tree/{rel}?reset&token={token}')
    page.wait_for_selector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook', timeout=90_000)
    page.wait_for_function('n => document.querySelectorAll(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output").length >= n',
                           arg=n_outputs, timeout=60_000)
    page.wait_for_function('''() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output img')]
                               .every(i => i.complete)''', timeout=30_000)
    for _ in range(240):        # the kernel up and idle, as a user would wait for it
        s = [x for x in api(base, token, '/api/sessions') if x['path'] == rel]
        if s and s[0]['kernel'] and s[0]['kernel'].get('execution_state') == 'idle': break
        page.wait_for_timeout(250)
    page.wait_for_timeout(1000)


def menu(page, top:str, item:str):
    "Click a JupyterLab menu item, as a user would"
    page.locator(f'.lm-MenuBar-itemLabel:text-is("{top}")').first.click()
    page.locator(f'.lm-Menu-itemLabel:text-is("{item}")').first.click()


def retire(base:str, token:str, keep:str|None=None):
    "Shut down the kernels of notebooks no longer shown (the page has moved on, so nothing is cut off mid-request)"
    for s in api(base, token, '/api/sessions'):
        if s['path'] != keep: api(base, token, f'/api/sessions/{s["id"]}', 'DELETE')


def check_paper(page, base, token, failures:list, report:list):
    "Every paper notebook, untrusted: images, cards (histogram, shaded tokens), nothing sanitized away"
    from nbformat import read, sign
    notary = sign.NotebookNotary(data_dir=os.environ['JUPYTER_DATA_DIR'])
    for f in sorted((ROOT/'nbs'/'paper').glob('*.ipynb')):
        nb = json.loads(f.read_text())
        if notary.check_signature(read(f, as_version=4)): failures.append(f'{f.name}: opened trusted; the test needs it untrusted')
        want = output_counts(nb)
        t0 = time.perf_counter()
        open_nb(page, base, token, f'nbs/paper/{f.name}', want['outputs'])
        retire(base, token, keep=f'nbs/paper/{f.name}')
        got = page.evaluate(DOM_COUNTS)
        probs = []
        if got['images'] != want['images']: probs.append(f"{got['images']} images rendered, {want['images']} committed")
        if got['broken']: probs.append(f"{got['broken']} images did not load")
        if got['cards'] != want['cards']: probs.append(f"{got['cards']} feature cards rendered, {want['cards']} committed")
        if got['card_hist'] != want['cards']: probs.append(f"{want['cards'] - got['card_hist']} cards lost their histogram")
        if got['card_shaded'] != want['cards']: probs.append(f"{want['cards'] - got['card_shaded']} cards lost their token shading")
        if got['svg_text']: probs.append(f"{got['svg_text']} outputs show a histogram's axis labels as bare text (svg sanitized)")
        lost = {t: (v, got['tags'].get(t, 0)) for t, v in want['tags'].items() if got['tags'].get(t, 0) < v}
        if lost: probs.append(f'HTML elements sanitized away (committed, rendered): {lost}')
        if got['styled'] < want['styled']: probs.append(f"styles sanitized away: {want['styled']} styled elements committed, {got['styled']} rendered")
        shot = SHOTS/f'paper_{f.stem}.png'      # the first card, else the first figure, else the first table
        for sel in ('.salmon-card', '.jp-OutputArea-output img', '.jp-OutputArea-output table'):
            loc = page.locator(f'.jp-NotebookPanel:not(.lm-mod-hidden) {sel}')
            if loc.count(): loc.first.evaluate('e => e.scrollIntoView({block: "start"})'); page.wait_for_timeout(300); break
        page.screenshot(path=str(shot))
        tabs = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output table')
        if tabs.count():
            tabs.last.evaluate('e => e.scrollIntoView({block: "start"})'); page.wait_for_timeout(300)
            page.screenshot(path=str(SHOTS/f'paper_{f.stem}_table.png'))
        report.append(f"{f.name}: {got['images']} images, {got['cards']} cards, {sum(want['tags'].values())} HTML elements; "
                      f"{time.perf_counter() - t0:.1f}s -> {shot.relative_to(ROOT)}")
        failures += [f'{f.name}: {p}' for p in probs]


def card_title(page, i:int=0)->str:
    return page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .salmon-card .salmon-title').nth(i).inner_text()


def check_browser(page, base, token, failures:list, report:list):
    "A live FeatureBrowser on the tiny preset: next, search (count, first hit selected), pick a hit; controls wrap"
    d = ROOT/'results'/'browser'; d.mkdir(parents=True, exist_ok=True)
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in FB_CELLS])
    nb.metadata['kernelspec'] = dict(name='salmon', display_name='salmon', language='python')
    nbformat.write(nb, d/'feature_browser.ipynb')
    t0 = time.perf_counter()
    open_nb(page, base, token, 'results/browser/feature_browser.ipynb')
    retire(base, token, keep='results/browser/feature_browser.ipynb')
    menu(page, 'Run', 'Run All Cells')
    nxt = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) button', has_text='▶')
    try: nxt.wait_for(timeout=300_000)
    except Exception:
        page.screenshot(path=str(SHOTS/'browser_failed.png'))
        errs = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]').all_inner_texts()
        failures.append(f'the FeatureBrowser did not appear within 300 s; stderr: {" | ".join(errs)[-1500:]}'); return
    page.wait_for_timeout(500)
    built = time.perf_counter() - t0
    # the controls stay inside the notebook at 1280x800 with the sidebar open, and the dropdowns keep a usable width
    lay = page.evaluate('''() => {
      const bar = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .salmon-bar');
      if (!bar) return null;
      const r = bar.getBoundingClientRect(), kids = [...bar.children].map(k => k.getBoundingClientRect());
      const sel = [...bar.querySelectorAll('select')].map(s => s.getBoundingClientRect().width);
      return {right: r.right, kids_right: Math.max(...kids.map(k => k.right)), min_select: Math.min(...sel), rows: new Set(kids.map(k => Math.round(k.top))).size};
    }''')
    if lay is None: failures.append('the FeatureBrowser has no .salmon-bar control row')
    else:
        if lay['kids_right'] > lay['right'] + 1: failures.append(f"the browser's controls overflow their row ({lay['kids_right']:.0f} > {lay['right']:.0f} px)")
        if lay['min_select'] < 150: failures.append(f"a dropdown of the browser is only {lay['min_select']:.0f} px wide")
    page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .salmon-bar').first.scroll_into_view_if_needed()
    page.screenshot(path=str(SHOTS/'browser_1_start.png'))
    first = card_title(page)
    t1 = time.perf_counter(); nxt.first.click()
    try: page.wait_for_function('t => document.querySelector(".jp-NotebookPanel:not(.lm-mod-hidden) .salmon-card .salmon-title").innerText !== t',
                                arg=first, timeout=15_000)
    except Exception: failures.append(f'▶ did not change the card (still {first!r})')
    t_next = time.perf_counter() - t1
    after = card_title(page)
    page.screenshot(path=str(SHOTS/'browser_2_next.png'))
    # search: a substring of a context word shown in the card after ▶
    lines = [l.split('│', 1)[1] for l in page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .salmon-card').first.inner_text().splitlines() if '│' in l]
    words = re.findall(r'[A-Za-z]{5,}', ' '.join(lines))
    query = (words[len(words) // 2] if words else 'the')[1:4].lower()
    box = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) input[placeholder="token or explanation"]')
    box.fill(query); box.press('Enter')
    count = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .salmon-count')
    try: page.wait_for_function('() => /\\d+ hits?|no hits/.test(document.querySelector(".jp-NotebookPanel:not(.lm-mod-hidden) .salmon-count").innerText)',
                                timeout=15_000)
    except Exception: failures.append(f'search {query!r} shows no hit count'); return
    m = re.search(r'([\d,]+) hits?', count.inner_text())
    n_hits = int(m.group(1).replace(',', '')) if m else 0
    sel = page.locator('.jp-NotebookPanel:not(.lm-mod-hidden) .salmon-bar select').first
    page.wait_for_timeout(500)
    chosen = sel.evaluate('s => s.selectedIndex')
    found = card_title(page)
    if n_hits < 2: failures.append(f'search {query!r} (a substring of a shown context) found {n_hits} latents; expected several')
    if chosen != 0: failures.append(f'search {query!r}: the first hit is not selected (index {chosen})')
    hit0 = sel.evaluate('s => s.options[0] ? s.options[0].text : ""')
    num0 = re.search(r'\d+', hit0 or '')
    if num0 and f'latent {num0.group()}' not in found: failures.append(f'search: the card shows {found!r}, not the first hit {hit0!r}')
    page.screenshot(path=str(SHOTS/'browser_3_search.png'))
    if n_hits >= 2:
        sel.select_option(index=1)
        try: page.wait_for_function('t => document.querySelector(".jp-NotebookPanel:not(.lm-mod-hidden) .salmon-card .salmon-title").innerText !== t',
                                    arg=found, timeout=15_000)
        except Exception: failures.append(f'picking the second hit did not change the card (still {found!r})')
    picked = card_title(page)
    page.screenshot(path=str(SHOTS/'browser_4_pick.png'))
    report.append(f'FeatureBrowser (tiny): built and shown in {built:.1f}s; ▶ {first!r} -> {after!r} in {t_next:.2f}s; '
                  f'search {query!r}: {n_hits} hits, first -> {found!r}; second hit -> {picked!r}')


def check_save(page, base, token, failures:list, report:list):
    "Open and save every committed notebook; git status must stay clean"
    nbs = sorted(p for p in (ROOT/'nbs').rglob('*.ipynb') if '.ipynb_checkpoints' not in p.parts)
    before = subprocess.run(['git', 'status', '--porcelain', '--', 'nbs'], cwd=ROOT, capture_output=True, text=True).stdout
    if before.strip(): failures.append(f'nbs/ was not clean before open-and-save:\n{before}'); return
    t0 = time.perf_counter(); unsaved = []
    for f in nbs:
        m0 = f.stat().st_mtime_ns
        open_nb(page, base, token, str(f.relative_to(ROOT)))
        retire(base, token, keep=str(f.relative_to(ROOT)))
        menu(page, 'File', 'Save Notebook')
        for _ in range(40):
            if f.stat().st_mtime_ns != m0: break
            page.wait_for_timeout(250)
        else: unsaved.append(f.name)
    if unsaved: failures.append(f'not saved (the test could not save them): {unsaved}')
    after = subprocess.run(['git', 'status', '--porcelain', '--', 'nbs'], cwd=ROOT, capture_output=True, text=True).stdout
    if after.strip():
        diff = subprocess.run(['git', 'diff', '--stat', '--', 'nbs'], cwd=ROOT, capture_output=True, text=True).stdout
        one = subprocess.run(['git', 'diff', '--', 'nbs'], cwd=ROOT, capture_output=True, text=True).stdout
        failures.append(f'open-then-save changed notebooks:\n{diff}\n{one[:3000]}')
    report.append(f'open-then-save: {len(nbs) - len(unsaved)} of {len(nbs)} notebooks saved in {time.perf_counter() - t0:.1f}s; '
                  f'git status {"clean" if not after.strip() else "DIRTY"}')


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--lab-args', default='--ServerApp.ip=127.0.0.1 --ContentsManager.pre_save_hook=nbdev.clean.clean_jupyter')
    ap.add_argument('--chromium', default='/usr/bin/chromium')
    ap.add_argument('--only', default='paper,browser,save', help='comma-separated parts to run')
    a = ap.parse_args()
    if not Path(a.chromium).exists():
        sys.exit(f'{a.chromium} not found: install Debian\'s chromium (apt-get install -y chromium) or pass --chromium')
    from playwright.sync_api import sync_playwright
    SHOTS.mkdir(parents=True, exist_ok=True)
    failures, report, errors = [], [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix='salmon-lab-') as tmp:
        tmp = Path(tmp); os.environ['JUPYTER_DATA_DIR'] = str(tmp/'data')
        proc, base, token = start_lab(a.lab_args, tmp)
        try:
            with sync_playwright() as pw:
                br = pw.chromium.launch(executable_path=a.chromium, args=CHROMIUM_FLAGS)
                page = br.new_page(viewport={'width': 1280, 'height': 800})
                page.on('pageerror', lambda e: errors.append(f'page error: {e}'))
                page.on('console', lambda m: m.type == 'error' and not OFFLINE.search(m.text) and errors.append(f'console error: {m.text}'))
                page.set_default_timeout(30_000)
                parts = a.only.split(',')
                if 'paper' in parts: check_paper(page, base, token, failures, report)
                if 'browser' in parts: check_browser(page, base, token, failures, report)
                if 'save' in parts: check_save(page, base, token, failures, report)
                br.close()
        finally:
            proc.terminate()
            try: proc.wait(20)
            except subprocess.TimeoutExpired: proc.kill()
    failures += errors
    print('\n'.join(report))
    print(f'screenshots: {SHOTS.relative_to(ROOT)}/*.png; {time.perf_counter() - t0:.0f}s in all')
    if failures:
        print('\nFAILED:\n- ' + '\n- '.join(failures)); sys.exit(1)
    print('browser test passed')


if __name__ == '__main__': main()
