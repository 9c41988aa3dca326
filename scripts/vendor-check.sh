#!/usr/bin/env bash
# Is vendor/ exactly the pinned registry releases plus the recorded patches?
#
#   bash scripts/vendor-check.sh            # check (CI runs this)
#   bash scripts/vendor-check.sh --record   # after a deliberate change: rewrite vendor/patches/
#
# For each vendored crate it downloads the pinned release from crates.io, checks its sha256
# against the lock file, and compares vendor/<crate> with it: the diff of every changed or added
# file must equal vendor/patches/<crate>.patch, and the files left out (tests, examples, benches)
# must equal vendor/patches/<crate>.removed. An unrecorded edit fails here, and so does a file
# that vendor/PATCHES.md does not name. An upgrade starts from these patches: apply them to the
# new release and review what does not apply.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
record=false
[[ "${1:-}" == "--record" ]] && record=true

crates=(candle-core:0.10.2 mistralrs-core:0.8.1 mistralrs:0.8.1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/upstream" "$work/patched" vendor/patches
export LC_ALL=C

failed=0
for pinned in "${crates[@]}"; do
  name=${pinned%%:*}
  version=${pinned##*:}
  archive="$work/$name-$version.crate"
  curl -sfL --retry 3 "https://static.crates.io/crates/$name/$name-$version.crate" -o "$archive" \
    || { echo "error: could not download $name $version from crates.io (vendor-check needs the network)" >&2; exit 2; }
  # The lock file pins the registry checksum of what vendor/ replaces.
  want=$(awk -v n="$name" -v v="$version" '
    $0 == "name = \"" n "\"" { hit = 1; next }
    hit && $0 == "version = \"" v "\"" { ok = 1; next }
    ok && /^checksum = / { gsub(/"/, "", $3); print $3; exit }
    /^\[\[package\]\]/ { hit = 0; ok = 0 }' Cargo.lock)
  got=$(sha256sum "$archive" | cut -d' ' -f1)
  if [[ -n "$want" && "$want" != "$got" ]]; then
    echo "error: $name $version from crates.io has sha256 $got, Cargo.lock says $want" >&2
    exit 2
  fi
  tar xzf "$archive" -C "$work/upstream"
  mv "$work/upstream/$name-$version" "$work/upstream/$name"
  cp -r "vendor/$name" "$work/patched/$name"

  (
    cd "$work"
    # Paths in the patch are upstream/<crate>/… and patched/<crate>/…: the same on any machine.
    git diff --no-index --no-color --diff-filter=AM upstream/"$name" patched/"$name" > "$name.patch" || true
    git diff --no-index --name-only --diff-filter=D upstream/"$name" patched/"$name" \
      | sed "s#^upstream/$name/##" | sort > "$name.removed" || true
    git diff --no-index --name-only --diff-filter=AM upstream/"$name" patched/"$name" \
      | sed "s#^patched/$name/##" | sort > "$name.touched" || true
  )

  if $record; then
    cp "$work/$name.patch" "vendor/patches/$name.patch"
    cp "$work/$name.removed" "vendor/patches/$name.removed"
    echo "recorded vendor/patches/$name.{patch,removed}: $(wc -l < "$work/$name.touched") files changed or added, $(wc -l < "$work/$name.removed") left out"
  else
    for kind in patch removed; do
      if ! cmp -s "$work/$name.$kind" "vendor/patches/$name.$kind"; then
        echo "error: vendor/$name differs from $name $version plus vendor/patches/$name.$kind:" >&2
        diff -u "vendor/patches/$name.$kind" "$work/$name.$kind" | head -60 >&2 || true
        echo "  (a deliberate change: record it in vendor/PATCHES.md, then bash scripts/vendor-check.sh --record)" >&2
        failed=1
      fi
    done
  fi
  # Every changed or added file is named in PATCHES.md, under its crate's heading.
  section=$(awk -v n="## $name $version" 'index($0, n) == 1 { on = 1; next } /^## / { on = 0 } on' vendor/PATCHES.md)
  while read -r file; do
    [[ -z "$file" ]] && continue
    if ! grep -qF "$file" <<< "$section"; then
      echo "error: vendor/$name/$file is changed but vendor/PATCHES.md's \"$name $version\" section does not name it" >&2
      failed=1
    fi
  done < "$work/$name.touched"
done

if [[ $failed -ne 0 ]]; then
  exit 1
fi
$record || echo "vendor/ is the pinned releases plus the recorded patches (${crates[*]})"
