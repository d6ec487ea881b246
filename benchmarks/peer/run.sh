#!/usr/bin/env bash
# camexport side by side with OpenVINO XAI (issue 15): latency and faithfulness on efficientnet_lite0 (real weights).
# The peer gets its own environment: openvino-xai 1.1.0 pins openvino-dev 2024.4 and numpy 1.x. Step 1 (building
# the graphs, exporting the plain model) runs in camexport's own environment, which has torch ($CAMEXPORT_PYTHON,
# default .venv/bin/python); step 2 in the peer's, with camexport's torch-free runtime beside it.
# Writes benchmarks/peer.json, peer.md, peer_vit.json and peer_vit.md. About 15 minutes on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="${WORK:-$here/work}"
venv="$here/.venv-peer"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "openvino-xai==1.1.0" -e "$root"
"${CAMEXPORT_PYTHON:-$root/.venv/bin/python}" "$here/prepare.py" "$work"
"$venv/bin/python" "$here/peer_xai.py" "$work" "$root/benchmarks/peer.json"
# ViT-ReciproCAM: agreement with the peer's ViTReciproCAM and the cost of each (benchmarks/peer_vit.md).
"${CAMEXPORT_PYTHON:-$root/.venv/bin/python}" "$here/vit_prepare.py" "$work"
"$venv/bin/python" "$here/vit_agreement.py" "$work" "$root/benchmarks/peer_vit.json"
