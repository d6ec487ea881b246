#!/usr/bin/env bash
# camexport side by side with OpenVINO XAI (issue 15): latency and faithfulness on efficientnet_lite0 (real weights).
# The peer gets its own environment: openvino-xai 1.1.0 pins openvino-dev 2024.4 and numpy 1.x. Step 1 (building
# the graphs, exporting the plain model) runs in camexport's own environment, which has torch ($CAMEXPORT_PYTHON,
# default .venv/bin/python); step 2 in the peer's, with camexport's torch-free runtime beside it.
# Writes benchmarks/peer.json and benchmarks/peer.md. About 10 minutes on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="${WORK:-$here/work}"
venv="$here/.venv-peer"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "openvino-xai==1.1.0" -e "$root"
"${CAMEXPORT_PYTHON:-$root/.venv/bin/python}" "$here/prepare.py" "$work"
"$venv/bin/python" "$here/peer_xai.py" "$work" "$root/benchmarks/peer.json"
