#!/usr/bin/env bash
# The one prepared run of benchmarks/gpu_tokenize.py, from the repo root:
#
#   bash benchmarks/gpu_tokenize.sh           # GPU box: 512 px, bf16, full-size MAGVIT-v2; ~3 min, capped at 8
#   bash benchmarks/gpu_tokenize.sh --smoke   # any machine: the same code paths on the CPU (~1.5 min)
#   bash benchmarks/gpu_tokenize.sh pack      # here, with a package index: what a bare GPU box lacks
#
# Which Python: pyproject pins torch==2.13.0, and `make install` builds .venv with the CPU wheel of
# it (the one in /opt/wheels), so .venv cannot run this on a GPU. Any Python whose torch sees CUDA
# will do (the GPU box's python3: torch 2.11+cu130, Python 3.12); the repo goes on PYTHONPATH, so
# nothing is installed. That Python lacks Ray, polars and jsonschema, and the box has no network:
# `pack` puts them (cp312 wheels, unpacked, Ray's Java/RLlib/Serve/LLM/dashboard-UI parts left out:
# ~63 MB of xz) in build/gpu-deps/, which is git-ignored, so the run tool must carry it:
#   run(command="bash benchmarks/gpu_tokenize.sh", carry=["build/gpu-deps"], timeout_s=540)
# Without the pack, and where pip can reach an index, `pip install --target build/pydeps` gets them
# (not a venv: one made from the box's python3, itself a venv, would not see its CUDA torch; and not
# `pip install -e .`: the torch pin would replace the CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
PACK_PY=${PACK_PY:-3.12}  # the GPU box's Python
PACK=build/gpu-deps/site-cp${PACK_PY/./}.tar.xz
DEPS=(ray==2.60.0 polars==2.1.0 polars-runtime-32==2.1.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1
      referencing==0.37.0 rpds-py==2026.9.1)

if [ "${1:-}" = pack ]; then
  pip=$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )
  site=$(mktemp -d)
  "$pip" -m pip install -q --no-deps --no-compile --only-binary=:all: --python-version "$PACK_PY" \
    --implementation cp --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 --target "$site" "${DEPS[@]}"
  rm -rf "$site"/bin "$site"/ray/{jars,rllib,serve,llm,dashboard/client/build}  # unused; the tree limit is 64 MiB
  mkdir -p build/gpu-deps
  XZ_OPT="-6 -T0" tar -C "$site" -cJf "$PACK" .
  rm -rf "$site"
  ls -l "$PACK"
  exit 0
fi

# A Python with torch (with CUDA unless --smoke): $PYTHON, else the box's python3, else .venv.
SMOKE=; [[ " $* " == *" --smoke "* ]] && SMOKE=1
want='import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' what="torch with CUDA"
candidates=("${PYTHON:-}" python3 .venv/bin/python)
[ -z "$SMOKE" ] || { want='import torch' what=torch; candidates=("${PYTHON:-}" .venv/bin/python python3); }
PY=
for c in "${candidates[@]}"; do
  if [ -n "$c" ] && command -v "$c" >/dev/null && "$c" -c "$want" 2>/dev/null; then PY=$(command -v "$c"); break; fi
done
[ -n "$PY" ] || { echo "no Python with $what found (set PYTHON=...)" >&2; exit 1; }

# The repo itself goes on PYTHONPATH (Ray workers inherit it and import paraforge_compat from it).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
need='import ray, ray.data, polars, pyarrow, transformers, tokenizers, safetensors, PIL, tqdm'
if ! "$PY" -c "$need" 2>/dev/null && [ -f "$PACK" ]; then
  site=/tmp/paraforge-gpu-site-cp${PACK_PY/./}
  [ -d "$site/ray" ] || { mkdir -p "$site" && { tar -C "$site" -xJf "$PACK" ||  # no xz binary: Python's lzma
    "$PY" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$PACK" "$site"; }; }
  export PYTHONPATH="$site:$PYTHONPATH"
  echo "packages from $PACK -> $site"
fi
if ! "$PY" -c "$need" 2>/dev/null; then  # no pack: fetch them, if an index is reachable
  echo "missing packages for $PY: pip install --target build/pydeps (needs a package index)"
  "$PY" -m pip install -q --target build/pydeps "${DEPS[@]}" "pyarrow>=18" "transformers>=5.16.1,<5.20" pillow safetensors tqdm
  export PYTHONPATH="$PWD/build/pydeps:$PYTHONPATH"
fi
"$PY" -c "import sys, torch, ray, pyarrow, transformers
print(f'python {sys.executable} {sys.version.split()[0]} | torch {torch.__version__} CUDA {torch.version.cuda} '
      f'available {torch.cuda.is_available()} | ray {ray.__version__} | pyarrow {pyarrow.__version__} | '
      f'transformers {transformers.__version__}')"
[ -n "$SMOKE" ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "CPU cores: $(nproc)"
# 480 s: the whole run is ~3 min on an H100; the cap keeps a stuck Ray job inside a 10-minute call.
exec timeout 480 "$PY" -m benchmarks.gpu_tokenize "$@"
