# Sourced by every entry point: the project-local libtorch (PyTorch's wheel in .venv) that tch
# builds and links against. Idempotent; installs only what is missing.
# shellcheck shell=bash
FRUGAL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export FRUGAL_ROOT
FRUGAL_TORCH_VERSION=2.11.0
export FRUGAL_VENV=${FRUGAL_VENV:-$FRUGAL_ROOT/.venv}

frugal_setup_libtorch() {
  local py=$FRUGAL_VENV/bin/python
  if [ -x "$py" ] && "$py" -W ignore -c "import torch,sys; sys.exit(torch.__version__.split('+')[0] != '$FRUGAL_TORCH_VERSION')" 2>/dev/null; then
    return 0
  fi
  echo "frugal: installing torch==$FRUGAL_TORCH_VERSION into $FRUGAL_VENV (about 1 min, 4.6 GB)" >&2
  python3 -m venv "$FRUGAL_VENV"
  # No pip cache: the venv is the cache, and a second copy of the CUDA wheels would cost 3 GB.
  "$FRUGAL_VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
    "torch==$FRUGAL_TORCH_VERSION"
}

# The other side of the interop tests: Hugging Face's own libraries load frugal's exports and
# build the models frugal imports; pyarrow writes the Parquet corpora frugal reads. Installed
# beside torch, only by the entry points that run those tests (`frugal_setup_interop`).
FRUGAL_INTEROP_PACKAGES=(transformers==5.23.0 tokenizers==0.23.3 safetensors==0.8.0 pyarrow==26.0.1)

frugal_setup_interop() {
  local py=$FRUGAL_VENV/bin/python want=() pkg
  for pkg in "${FRUGAL_INTEROP_PACKAGES[@]}"; do
    "$py" -W ignore -c "import importlib.metadata as m, sys; sys.exit(m.version('${pkg%%==*}') != '${pkg#*==}')" 2>/dev/null || want+=("$pkg")
  done
  [ ${#want[@]} -eq 0 ] && return 0
  echo "frugal: installing ${want[*]} into $FRUGAL_VENV" >&2
  "$FRUGAL_VENV/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "${want[@]}"
}

frugal_setup_libtorch
export LIBTORCH_USE_PYTORCH=1
export PATH=$FRUGAL_VENV/bin:$PATH
FRUGAL_TORCH_LIB=$("$FRUGAL_VENV/bin/python" -W ignore -c 'import os,torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
export FRUGAL_TORCH_LIB
export LD_LIBRARY_PATH=$FRUGAL_TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
