# Sourced by the other scripts: where cargo builds, and the one profile everything uses.
#
# The target directory lives outside the clone so that a fresh clone (CI runs in one) reuses an
# earlier build: a cold build of mistral.rs takes ~26 minutes on 2 cores.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rapport/target}"
export RAPPORT_BIN="$CARGO_TARGET_DIR/release/rapport"
# A CI log is read by people: no colour codes, no progress bars redrawn in place.
if [ -n "${CI:-}" ]; then export CARGO_TERM_COLOR=never CARGO_TERM_PROGRESS_WHEN=never; fi
# A toolchain installed by scripts/bootstrap.sh (rustup) lives in ~/.cargo/bin, which a shell
# opened before the install does not have on its PATH yet.
case ":$PATH:" in
  *":${CARGO_HOME:-$HOME/.cargo}/bin:"*) ;;
  *) export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH" ;;
esac
