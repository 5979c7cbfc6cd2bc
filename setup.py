"Package metadata for salmon, read from settings.ini (nbdev 2)."
import shlex
from configparser import ConfigParser
from pathlib import Path
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
c = cfg['DEFAULT']
req = lambda k: shlex.split(c.get(k, ''))
licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
lic = licenses[c['license']]
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
py_versions = ['3.10', '3.11', '3.12', '3.13']
min_py = c['min_python']
scripts = [s for s in c.get('console_scripts', '').split() if s]

setuptools.setup(
    name=c['lib_name'], version=c['version'], description=c['description'],
    keywords=c['keywords'].split(), license=lic[0],
    author=c['author'], author_email=c['author_email'], url=c['git_url'],
    classifiers=['Development Status :: ' + statuses[int(c['status'])], 'Intended Audience :: ' + c['audience'],
                 'License :: ' + lic[1], 'Natural Language :: ' + c['language']]
                + ['Programming Language :: Python :: ' + v for v in py_versions[py_versions.index(min_py):]],
    long_description=Path('README.md').read_text(encoding='utf-8'), long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['salmon', 'salmon.*']),
    include_package_data=True, zip_safe=False,
    install_requires=req('requirements'),
    extras_require={'demo': req('demo_requirements'), 'bench': req('bench_requirements'), 'lab': req('lab_requirements'),
                    'browser': req('lab_requirements') + req('browser_requirements'),
                    'saebench': req('saebench_requirements'),
                    'dev': req('dev_requirements') + req('demo_requirements') + req('saebench_requirements')},
    python_requires='>=' + min_py,
    entry_points={'console_scripts': scripts, 'nbdev': [f"{c['lib_path']}={c['lib_path']}._modidx:d"]},
)
