#!/usr/bin/env bash
# The small-model path end to end from the command lines, on the demo model: search student
# shapes, distil the chosen one, prune it, export it to int8 ONNX, publish it to the `edge`
# alias, and have a simulated device enroll, sync and answer. Each step registers its result
# with its parent. Run from the repository root with the stack installed (make install):
#
#   scripts/edge_walkthrough.sh [WORK_DIR]      (default results/edge-walkthrough)
#
# WORK_DIR holds the registry (LLMOPS_HOME), the device folder, the gateway's log and
# walkthrough.json: every registered version with its kind, parent and metrics.
set -euo pipefail
if [ -x .venv/bin/python ]; then export PATH="$PWD/.venv/bin:$PATH"; fi
work=$(realpath -m "${1:-results/edge-walkthrough}")
mkdir -p "$work"
export LLMOPS_HOME="$work/home"
unset LLMOPS_DATABASE_URL
port=${PORT:-8765}
step() { printf '\n== %s\n' "$*"; }
field() { python -c "import json, sys; print(json.load(sys.stdin)$1)"; }
# Exact match of a version on the demo suites (add, upper, lookup), one JSON line per version.
score() {
  llm-evals --json run demo-skills --model "$1" 2>/dev/null | python -c "
import json, sys
run = json.load(sys.stdin)
scores = {k.split('/')[0]: round(v['value'], 3) for k, v in run['metrics'].items() if k.endswith('/exact_match')}
print(json.dumps({'ref': run['version'], **scores}))" | tee -a "$work/scores.jsonl"
}

step "the teacher: the demo model, and its skills data in data/skills"
if ! llm-registry show demo >/dev/null 2>&1; then
  python scripts/build_demo_model.py --output "$work/demo-model" --data-dir data/skills
fi

rm -f "$work/scores.jsonl"
score demo

step "tune: search student shapes (6 distillations of 1,000 steps)"
llm-finetune --json tune run configs/automl/demo-students.yaml --here | tee "$work/tune.json"
shape=$(python - "$work/tune.json" <<'PY'
import json, sys, yaml
chosen = json.load(open(sys.argv[1]))["chosen_params"]
student = yaml.safe_load(open("configs/finetune/demo-distill.yaml"))["student"]
student.update({k.split(".", 1)[1]: v for k, v in chosen.items() if k.startswith("student.")})
print(json.dumps(student))
PY
)
score "$(field '["registered_version"]' < "$work/tune.json")"

step "distil: the chosen shape $shape with the full recipe, training data cleaned first"
llm-finetune --json run configs/finetune/demo-distill.yaml --student "$shape" --clean true \
  > "$work/distill.json"
student=$(field '["registered_version"]' < "$work/distill.json")
score "$student"

step "prune: a quarter of $student's MLP channels, then a short recovery fine-tune"
llm-finetune --json run configs/finetune/demo-prune.yaml --base_model "$student" \
  --pruning '{mlp_ratio: 0.25, heads_ratio: 0.0}' --register_as demo-edge > "$work/prune.json"
pruned=$(field '["registered_version"]' < "$work/prune.json")
score "$pruned"

step "export: $pruned to int8 ONNX, checked against PyTorch"
llm-finetune --json export "$pruned" --precision int8 > "$work/export.json"
onnx=$(field '["ref"]' < "$work/export.json")
llm-registry alias set "${onnx%%:*}" edge "${onnx##*:}"

step "deliver: the gateway signs bundles; a device enrolls, syncs and answers"
llm-serve edge public-key > "$work/gateway.pub"
llm-serve --json edge add "kiosk-$$" --model "${onnx%%:*}@edge" | field '["key"]' > "$work/device.key"
llm-serve --port "$port" > "$work/gateway.log" 2>&1 &
gateway=$!
trap 'kill $gateway 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
rm -rf "$work/device"
llm-edge enroll --gateway "http://127.0.0.1:$port" --dir "$work/device" \
  --public-key "$work/gateway.pub" --api-key-file "$work/device.key"
LLMOPS_EDGE_API_KEY=$(cat "$work/device.key") llm-edge sync --dir "$work/device" --model "${onnx%%:*}@edge"
llm-edge run "$work/device" "What is 12 + 30?" | tee "$work/answer.txt"
llm-serve edge devices

step "lineage"
python - "$work" "$onnx" <<'PY'
import json, subprocess, sys
work, ref = sys.argv[1], sys.argv[2]
chain = []
while ref:
    shown = subprocess.run(["llm-registry", "--json", "show", ref], capture_output=True, text=True, check=True)
    version = json.loads(shown.stdout)
    chain.append({k: version.get(k) for k in ("ref", "kind", "format", "parent", "metrics", "tags")})
    ref = version.get("parent")
for v in chain:
    print(f"{v['ref']:<20} {v['kind']:<10} {v['format']:<16} parent {v['parent']}")
scores = [json.loads(line) for line in open(f"{work}/scores.jsonl")]
answer = open(f"{work}/answer.txt").read().strip()
summary = {"chain": chain, "exact_match": scores, "device_answer": answer}
json.dump(summary, open(f"{work}/walkthrough.json", "w"), indent=2)
PY
