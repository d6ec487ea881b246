#!/usr/bin/env bash
# camexport side by side with OpenVINO XAI: latency and faithfulness on efficientnet_lite0 (real weights).
# The peer gets its own environment: openvino-xai 1.1.0 pins openvino-dev 2024.4 and numpy 1.x. Step 1 (building
# the graphs, exporting the plain model) runs in camexport's own environment, which has torch ($CAMEXPORT_PYTHON,
# default .venv/bin/python); step 2 in the peer's, with camexport's torch-free runtime beside it (the step-2
# scripts import only camexport's runtime and benchmarks.peer, never benchmarks.harness).
# Every script runs as a module from the repository root (python -m benchmarks.peer.<script>).
# Writes benchmarks/peer/peer.json, peer.md, peer_vit.json and peer_vit.md. About 15 minutes on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
work="${WORK:-$here/work}"
venv="$here/.venv-peer"
camexport_python="${CAMEXPORT_PYTHON:-$root/.venv/bin/python}"
case "$work" in /*) ;; *) work="$PWD/$work" ;; esac  # the scripts run from the repository root (cd below)
case "$camexport_python" in /*) ;; */*) camexport_python="$PWD/$camexport_python" ;; esac
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "openvino-xai==1.1.0" -e "$root"
cd "$root"
"$camexport_python" -m benchmarks.peer.prepare "$work"
"$venv/bin/python" -m benchmarks.peer.peer_xai "$work" "$here/peer.json"
# ViT-ReciproCAM: agreement with the peer's ViTReciproCAM and the cost of each (benchmarks/peer/peer_vit.md).
"$camexport_python" -m benchmarks.peer.vit_prepare "$work"
"$venv/bin/python" -m benchmarks.peer.vit_agreement "$work" "$here/peer_vit.json"
