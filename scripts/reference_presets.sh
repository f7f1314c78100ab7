#!/usr/bin/env bash
# Re-create results/reference/<preset>/: every reproduction preset of conf/ablation/ on real
# Fashion-MNIST (the files of Debian's dataset-fashion-mnist in $BNBENCH_DATA/FashionMNIST/raw),
# two joblib workers with one torch thread each. The AlexNet presets use the first 6,000
# training and 2,000 test images and fewer epochs, to fit a 2-core CPU (about 20 minutes in
# all); drop those overrides on a GPU.
#
#   BNBENCH_DATA=/path/to/data scripts/reference_presets.sh [preset ...]
set -euo pipefail
export BNBENCH_DATA=${BNBENCH_DATA:-data}
common=(hydra/launcher=parallel trainer.threads=1 results_dir=results/reference --quiet)
subset=(dataset.train_size=6000 dataset.test_size=2000)

declare -A extra=(
  [ioffe2015]=""
  [deep_sigmoid]=""
  [lr_tolerance]=""
  [keras_mlp]=""
  [mlp64_adam]=""
  [regression_mlp]=""
  [placement]="${subset[*]} trainer.epochs=2"
  [alexnet_bn_adam]="${subset[*]} trainer.epochs=5"
  [tuned_placement]=""
  [santurkar2018_ics]=""
  [santurkar2018_smoothness]=""
  [wuhe2018_batch]=""
  [santurkar2018_noise]="${subset[*]}"
  [bn_momentum]=""
)
presets=("$@")
[ ${#presets[@]} -gt 0 ] || presets=(ioffe2015 deep_sigmoid lr_tolerance keras_mlp mlp64_adam regression_mlp placement alexnet_bn_adam tuned_placement santurkar2018_ics santurkar2018_smoothness wuhe2018_batch santurkar2018_noise bn_momentum)
for preset in "${presets[@]}"; do
  if [[ ! -v "extra[$preset]" ]]; then
    echo "reference_presets.sh: unknown preset '$preset'; choose from: ${!extra[*]}" >&2
    exit 2
  fi
done
for preset in "${presets[@]}"; do
  # shellcheck disable=SC2086  # the extra overrides are words
  bnbench run -m "ablation=$preset" "sweep.name=$preset" ${extra[$preset]} "${common[@]}"
  dir=results/reference/$preset
  case $preset in
    lr_tolerance)  # the profile over the rates is the report; each arm at its own rate beside it
      bnbench report "$dir" --profile optimizer.lr --margin 0.5 --quiet
      bnbench report "$dir" --select optimizer.lr --margin 0.5 --out "$dir/selected" --quiet ;;
    tuned_placement)  # each arm at its own rate, then those rates on 5 fresh seeds
      bnbench report "$dir" --select optimizer.lr --margin 0.5 --quiet
      bnbench confirm "$dir" --select optimizer.lr --seeds 5 hydra/launcher=parallel trainer.threads=1 --quiet ;;
    wuhe2018_batch)  # accuracy against the batch size, per norm kind, each norm x batch at its own rate
      bnbench report "$dir" --select optimizer.lr --profile trainer.batch_size --metric final_test_acc --margin 0.5 \
        --quiet ;;
    santurkar2018_noise)  # noisy BN against plain BN, beside the report against no BN; then the MLP to a
      # plateau of its test accuracy (30 epochs, 3,000 steps): 2 epochs is early training
      bnbench report "$dir" --baseline norm=bn_before --out "$dir/vs_bn" --quiet
      bnbench run -m ablation=santurkar2018_noise model=mlp trainer.epochs=30 diagnostics.every=100 \
        sweep.name=santurkar2018_noise_long ${extra[$preset]} "${common[@]}" ;;
    bn_momentum)  # the final weights with running, batch and precise BN statistics
      bnbench evalmodes "$dir" --batch-sizes 2,8,32,128 ;;
  esac
done
