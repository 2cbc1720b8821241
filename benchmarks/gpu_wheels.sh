#!/usr/bin/env bash
# Wheels for running benchmarks/gpu.py on a lent GPU machine whose Python (3.12, torch, transformers 5.17,
# accelerate, peft ...) lacks langlift's other requirements and cannot reach a package index.
# Run here (where pip works), from the repository root: fills .whl/ (ignored by git), ~40 MB.
# bitsandbytes is cut to its CUDA 13 libraries (the machine's torch is a cu130 build): the full wheel is 42 MB
# and the device tool carries at most 64 MiB with the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
rm -rf .whl && mkdir -p .whl
# the modules `benchmarks/gpu.py --dry` imports that the machine's image does not hold (pinned as in .venv)
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  transformers==5.23.0 peft==0.21.2 trl==1.16.0 bitsandbytes==0.50.2 datasets==5.2.0 lm_eval==0.4.13 \
  dill==0.4.1 multiprocess==0.70.19 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 \
  typing-inspection==0.4.5 dvclive==3.49.1 dvc==3.67.1 dvc-data==3.18.3 dvc-http==2.32.0 dvc-objects==5.2.0 \
  dvc-render==1.0.2 dvc-studio-client==0.23.0 scmrepo==3.6.2 dulwich==1.2.21 funcy==2.1 ruamel.yaml==0.19.1 \
  flatten-dict==0.5.0 flufl.lock==9.2.0 zc.lockfile==4.0 atpublic==9.0.0 diskcache==5.6.3 dpath==2.2.0 \
  pygtrie==2.6.2 sqltrie==0.11.3 orjson==3.13.0 voluptuous==0.16.0 pydot==4.0.1 py3langid==0.4.0 \
  PySocks==1.7.1 chardet==6.0.0.post1 httpcore2==2.16.2 httpx2==2.16.2 outcome==1.3.0.post0 \
  sniffio==1.3.1 trio==0.35.0 truststore==0.10.5 wcwidth==0.9.4 pytz==2026.6
$PY - <<'EOF'
"""Drop bitsandbytes' libraries for other CUDA and ROCm versions from its wheel (RECORD kept in step)."""
import glob, os, re, zipfile
src = glob.glob(".whl/bitsandbytes-*.whl")[0]
keep = re.compile(r"libbitsandbytes_(cuda13\d|cpu)\.")
drop = lambda n: "libbitsandbytes_" in n and not keep.search(n)
tmp = src + ".tmp"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if drop(item.filename):
            continue
        data = zin.read(item.filename)
        if item.filename.endswith(".dist-info/RECORD"):
            data = b"\n".join(l for l in data.split(b"\n") if not drop(l.decode()))
        zout.writestr(item, data)
os.replace(tmp, src)
EOF
du -sh .whl
