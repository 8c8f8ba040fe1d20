# Shared by scripts/run and scripts/test: paths, the build toolchain check, timing.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${TF_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/taskfactory}
# One target folder outside the checkout, so fresh clones (CI) reuse earlier builds.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE_DIR/target}
TF=$CARGO_TARGET_DIR/debug/tf

say() { printf '\n==> %s\n' "$*" >&2; }

ensure_build_tools() {
  command -v cargo >/dev/null || { echo "cargo not found: install Rust 1.92+ with rustup (https://rustup.rs)" >&2; exit 1; }
  local missing=()
  for tool in cc make perl pkg-config; do command -v "$tool" >/dev/null || missing+=("$tool"); done
  # librdkafka is built with TLS (and so SASL/SCRAM) against the system's OpenSSL.
  command -v pkg-config >/dev/null && pkg-config --exists openssl || missing+=(libssl-dev)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing build tools (missing: ${missing[*]})"
    local sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential perl pkg-config libssl-dev >/dev/null
  fi
}

# Runs "$@" and records how long it took under a label for the summary.
TIMINGS=()
timed() {
  local label=$1; shift
  local t0=$SECONDS
  "$@"
  TIMINGS+=("$(printf '%-22s %4ss' "$label" $((SECONDS - t0)))")
}
print_timings() {
  printf '\n--- timing ---\n' >&2
  printf '%s\n' "${TIMINGS[@]}" >&2
}
