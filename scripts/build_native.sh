#!/usr/bin/env bash
# The optional compiled partition reader (native/: Rust + PyO3) built into
# presence/_native.abi3.so, which presence then uses (PRESENCE_READER=auto).
# Run by `make install`. Without cargo (on PATH, or rustup's ~/.cargo/bin), or
# with NATIVE=0, or if the build fails: one line, exit 0, and presence runs its
# pure-Python reader (same outcomes, slower). Crates come pinned by
# native/Cargo.lock; the build directory is ~/.cache/presence/native-target,
# so a fresh clone rebuilds in seconds.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${NATIVE_OUT:-presence/_native.abi3.so}
PYTHON=${PYTHON_FOR_NATIVE:-.venv/bin/python}
if [ "${NATIVE:-1}" = 0 ]; then
  echo "native reader: not built (NATIVE=0); presence uses the pure-Python reader"
  exit 0
fi
CARGO=$(command -v cargo || true)
if [ -z "$CARGO" ] && [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]; then
  CARGO=${CARGO_HOME:-$HOME/.cargo}/bin/cargo
  export PATH="$(dirname "$CARGO"):$PATH"
fi
if [ -z "$CARGO" ]; then
  echo "native reader: not built (no cargo on PATH: install Rust to build it); presence uses the pure-Python reader"
  exit 0
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/presence/native-target}
mkdir -p "$CARGO_TARGET_DIR"
LOG="$CARGO_TARGET_DIR/build.log"
[ -x "$PYTHON" ] && export PYO3_PYTHON="$PWD/$PYTHON"
if "$CARGO" build --release --locked --quiet --manifest-path native/Cargo.toml >"$LOG" 2>&1 \
   && cp "$CARGO_TARGET_DIR/release/lib_native.$( [ "$(uname)" = Darwin ] && echo dylib || echo so)" "$OUT.tmp" \
   && mv "$OUT.tmp" "$OUT"; then
  echo "native reader: built ($OUT)"
else
  rm -f "$OUT" "$OUT.tmp"
  echo "native reader: build failed (see $LOG); presence uses the pure-Python reader"
fi
exit 0
