#!/usr/bin/env bash
# A second environment for SAEDashboard (sae-dashboard 0.8.0 pins transformer-lens < 3 and
# transformers < 4.57, which cannot share an environment with this package's transformer-lens >= 3.9).
# This package goes in with --no-deps: its saved-SAE loading and the embedded model work there.
#
#   bash examples/saedashboard_env.sh [ENV_DIR]        # default .venv-dashboard; about 3 minutes
#   ENV_DIR/bin/python examples/saedashboard_feature_page.py SAE_DIR page.html
#
# TORCH (default torch==2.13.0, the CPU wheel this repo tests with) is installed first; on a GPU
# machine set it to the build you want, e.g. TORCH="torch==2.6.0".
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
env_dir="${1:-$repo/.venv-dashboard}"
torch_spec="${TORCH:-torch==2.13.0}"
constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
# The torch above, never another one; pyarrow 26 needs numpy >= 2, transformer-lens 2.x pins numpy < 2.
printf '%s\npyarrow<26\n' "$torch_spec" > "$constraints"
quiet() { grep -v "WARNING: Location" >&2 || true; }

rm -rf "$env_dir"
python3 -m venv "$env_dir"
"$env_dir/bin/pip" install -q "$torch_spec" 2> >(quiet)
"$env_dir/bin/pip" install -q -c "$constraints" sae-dashboard==0.8.0 sae-lens==6.54.12 2> >(quiet)
# decode-clt, a dependency of sae-dashboard, pulls torchvision and torchaudio, whose PyPI wheels
# do not load beside a CPU torch wheel ("operator torchvision::nms does not exist"); nothing on this
# route imports them.
"$env_dir/bin/pip" uninstall -q -y torchvision torchaudio
# Built from a clean copy of the tracked files, so nothing is written into the checkout.
copy="$(mktemp -d)"
git -C "$repo" ls-files -z | (cd "$repo" && xargs -0 cp --parents -t "$copy")
"$env_dir/bin/pip" install -q --no-deps "$copy" 2> >(quiet)
rm -rf "$copy"
"$env_dir/bin/python" -c "import sae_dashboard.sae_vis_runner, sae_lens, sae_variants; print('SAEDashboard environment ready:', '$env_dir')"
