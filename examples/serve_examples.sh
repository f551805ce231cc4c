#!/usr/bin/env bash
# Reproduce the serving examples of docs/serving.md: train the fast recipe, make it champion, serve it on
# 127.0.0.1:5001 and send the example images. Run from the repository root with the venv active:
#   DIGITML_DATA_DIR=../shared/data/mnist bash examples/serve_examples.sh
set -euo pipefail
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db"
examples=$(cd "$(dirname "$0")" && pwd)
cd "$work"

run_id=$(digitml train --config fast | sed -n 's/^run_id: //p')
digitml promote --model-uri "runs:/$run_id/model"
mlflow models serve -m "models:/digit-classifier@champion" -h 127.0.0.1 -p 5001 --env-manager local \
  >server.log 2>&1 &
server=$!
until curl -sf 127.0.0.1:5001/ping >/dev/null; do sleep 1; done

echo '$ curl ... {"dataframe_records": [{"image": "<seven.png>"}]}'
curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
  -d "{\"dataframe_records\": [{\"image\": \"$(base64 -w0 "$examples/seven.png")\"}]}"
echo
echo '$ curl ... {"dataframe_split": {"columns": ["image"], "data": [[<three.jpg>], [<zero.png>]]}}'
curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
  -d "{\"dataframe_split\": {\"columns\": [\"image\"], \"data\": [[\"$(base64 -w0 "$examples/three.jpg")\"], [\"$(base64 -w0 "$examples/zero.png")\"]]}}"
echo
echo '$ curl ... {"dataframe_records": [{"pixels": <28x28 array, 0-255>}]}'
pixels=$(python -c "import json, sys; from digitml.imaging import image_to_array
print(json.dumps((image_to_array(open(sys.argv[1], 'rb').read()) * 255).round().astype(int).tolist()))" "$examples/seven.png")
curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
  -d "{\"dataframe_records\": [{\"pixels\": $pixels}]}"
echo
echo '$ curl ... {"dataframe_records": [{"image": "bm90IGFuIGltYWdl"}]}   # "not an image"'
curl -s 127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
  -d '{"dataframe_records": [{"image": "bm90IGFuIGltYWdl"}]}' -w '  (HTTP %{http_code})'
echo
echo '$ digitml predict --model-uri models:/digit-classifier@champion seven.png three.jpg zero.png'
(cd "$examples" && digitml predict --model-uri models:/digit-classifier@champion seven.png three.jpg zero.png)
