#!/usr/bin/env bash
# Issue 19's transfer study on CIFAR-10: does φ help a new client more than training from scratch?
# For each of 3 seeds: brmtrl (the shipped default defense) without and with 20 % sign-flipping clients,
# and FedAvg without attack (its global model, fine-tuned, is the third baseline), 25 rounds without
# augmentation, 11 local epochs for every method; 10 clients held out of training (never sampled, never
# Byzantine) each fit on k = 1, 5, 10, 20 samples per class of their 2 classes, each method's epochs and lr
# chosen on one held-out sample per class of the k shots (transfer.select = "validation"; k = 1: 100 epochs
# at the training lr). Resumable: a finished run is skipped, an interrupted one continues from its checkpoint.
#   bash experiments/transfer_cifar10.sh [OUT=runs/transfer-cifar10] [SEEDS="0 1 2"] [METHODS="brmtrl fedavg"]
#   python experiments/transfer_study.py runs/transfer-cifar10 [--merge docs/results/transfer/data/transfer-cifar10.json] --name transfer-cifar10 --out docs/results/transfer
set -euo pipefail
OUT=${1:-runs/transfer-cifar10}
SEEDS=${2:-0 1 2}
METHODS=${3:-brmtrl fedavg}
C=(--config configs/cifar10.toml --set dataset.root=../shared/data/cifar10 --set dataset.augment=false
   --set train.rounds=25 --set train.local_epochs=11 --set threads=1 --set transfer.clients=10
   --set "transfer.shots=[1,5,10,20]" --set eval.protocol=fedrep --quiet)
run() {  # run DIR ARGS...: skip when finished, resume when interrupted
  local dir=$1; shift
  if [ -f "$dir/results.json" ] && python -c "import json,sys; r=json.load(open('$dir/results.json')); sys.exit(0 if r['final']['rounds']==25 and r.get('transfer') else 1)"; then
    echo "done: $dir"; return; fi
  if [ -f "$dir/checkpoint.pt" ]; then brmtrl run --resume "$dir" --quiet; else brmtrl run "${C[@]}" "$@" --out "$dir"; fi
}
# brmtrl first (the target: its fresh head against the tuned model from scratch), then FedAvg: a FedAvg
# run fine-tunes its own global model on the same new clients (the third baseline, transfer.fedavg_run
# not needed), so every run stands alone and the table joins them.
if [[ " $METHODS " == *" brmtrl "* ]]; then for seed in $SEEDS; do
  run "$OUT/brmtrl-none-seed$seed" --set seed=$seed --set attack.name=none --set attack.byzantine_fraction=0.0
  run "$OUT/brmtrl-signflip-seed$seed" --set seed=$seed
done; fi
if [[ " $METHODS " == *" fedavg "* ]]; then for seed in $SEEDS; do
  run "$OUT/fedavg-seed$seed" --set seed=$seed --set algorithm.name=fedavg --set aggregator.name=mean \
      --set reputation.name=none --set attack.name=none --set attack.byzantine_fraction=0.0
done; fi
