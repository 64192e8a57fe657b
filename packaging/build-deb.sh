#!/usr/bin/env bash
# Builds target/debian/vmwarden_<version>-1_<arch>.deb: installs the build tools when missing
# (cargo-deb, dpkg-dev for dpkg-shlibdeps), generates the man pages and completions from the
# clap definitions, then `cargo deb` (a `cargo build --release` of both binaries, stripped).
# Prints the path of the package on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
CARGO=${CARGO:-cargo}
export DEBIAN_FRONTEND=noninteractive

if ! command -v dpkg-shlibdeps >/dev/null; then
  apt-get update -q && apt-get install -y -q --no-install-recommends dpkg-dev
fi
if ! $CARGO deb --version >/dev/null 2>&1; then
  echo "== installing cargo-deb (takes a few minutes)" >&2
  $CARGO install cargo-deb --locked
fi

rm -rf target/assets
$CARGO run --quiet --example gen_assets -- target/assets >&2
# --strip: [profile.release] keeps line tables for benches and profiling; the package ships
# stripped binaries (lintian: unstripped-binary-or-object).
# cargo deb prints the package's path on stdout (under $CARGO_TARGET_DIR when set).
deb=$($CARGO deb --strip --no-separate-debug-symbols "$@" | tail -n 1)
[ -f "$deb" ] || { echo "cargo deb did not report a package" >&2; exit 1; }
echo "$deb"
