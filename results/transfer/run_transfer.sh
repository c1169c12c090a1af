#!/usr/bin/env bash
# Transfer and enrolment evidence (issue 23), run from a folder whose runs/ holds the MNIST-5k source
# run (slicenet optimise --method cma --out runs/mnist-cma-s0); the report lands in results/transfer.
set -euo pipefail
done_() { [ -f "$1/metrics.json" ]; }  # a finished run is kept on a rerun
OUT=${OUT:-results/transfer}
S=runs/mnist-cma-s0
# 3. Enrolment: a trunk searched on MNIST-5k's digits 0-4 only, then 5-9 enrolled from N images each,
#    against the ten-class trunk with the same bank (its bank rebuilt from 0-4, then the same enrolment).
done_ runs/mnist04-cma-s0 || slicenet optimise --method cma --dataset 'mnist#0-4' --quiet --out runs/mnist04-cma-s0
done_ runs/mnist10trunk-04bank || slicenet transfer $S --dataset 'mnist#0-4' --tune none --quiet --out runs/mnist10trunk-04bank
for source in mnist04-cma-s0 mnist10trunk-04bank; do
  for n in 1 5 20 0; do
    k=$([ "$n" -gt 0 ] && echo 1 || echo 0)  # 1-NN for few images per new class, the engine's k=9 for all
    done_ runs/enrol-$source-$n || slicenet enrol runs/$source --dataset 'mnist#5-9' --per-class $n --n-neighbors $k --evaluate-on mnist \
      --out runs/enrol-$source-$n
  done
done
# 1. MNIST-5k -> digits (resized to 28x28): keep, re-tune all, a fixed partial set, random selection, the GAs.
done_ runs/tr-digits-none || slicenet transfer $S --dataset digits --tune none --quiet --out runs/tr-digits-none
done_ runs/tr-digits-all || slicenet transfer $S --dataset digits --tune all --quiet --out runs/tr-digits-all
done_ runs/tr-digits-1 || slicenet transfer $S --dataset digits --tune 1 --quiet --out runs/tr-digits-1
# random selection = the mask GA's first generation alone, at the GA's number of transfers (4 x 2 = 8)
slicenet transfer $S --dataset digits --tune ga --ga mask --ga-population 8 --ga-generations 0 --quiet \
  --out runs/tr-digits-random
slicenet transfer $S --dataset digits --tune ga --ga mask --ga-population 4 --ga-generations 1 --quiet \
  --out runs/tr-digits-ga-mask
slicenet transfer $S --dataset digits --tune ga --ga depth --ga-population 4 --ga-generations 1 --quiet \
  --out runs/tr-digits-ga-depth
# the depth GA within one --tune all's wall time: each individual's search 1/6 as long (5 and 20 generations)
slicenet transfer $S --dataset digits --tune ga --ga depth --ga-population 4 --ga-generations 1 --generations 5 20 \
  --quiet --out runs/tr-digits-ga-depth-short
# 2. MNIST-5k -> Fashion-MNIST 60k/10k: keep, re-tune all, layer 1 only.
done_ runs/tr-fashion-none || slicenet transfer $S --dataset fashion-mnist --tune none --quiet --out runs/tr-fashion-none
done_ runs/tr-fashion-all || slicenet transfer $S --dataset fashion-mnist --tune all --quiet --out runs/tr-fashion-all
done_ runs/tr-fashion-1 || slicenet transfer $S --dataset fashion-mnist --tune 1 --quiet --out runs/tr-fashion-1
#    The two GAs at the digits runs' sizes (4 x 2 generations each).
slicenet transfer $S --dataset fashion-mnist --tune ga --ga mask --ga-population 4 --ga-generations 1 --quiet \
  --out runs/tr-fashion-ga-mask
slicenet transfer $S --dataset fashion-mnist --tune ga --ga depth --ga-population 4 --ga-generations 1 --quiet \
  --out runs/tr-fashion-ga-depth
# 3b. The same enrolment into compact banks (condense --prototypes P: LVQ, P per class), where every class,
#     old and new, has P prototypes: the enrolled images are k-means-reduced to P (with their shifted copies).
for p in 5 20 50; do
  for source in mnist04-cma-s0 mnist10trunk-04bank; do
    done_ runs/$source-p$p || slicenet condense runs/$source --prototypes $p --out runs/$source-p$p
    ns=$([ "$p" -eq 20 ] && echo "1 5 20" || echo 20)
    for n in $ns; do
      done_ runs/enrol-$source-p$p-$n || slicenet enrol runs/$source-p$p --dataset 'mnist#5-9' --per-class $n \
        --n-neighbors 1 --evaluate-on mnist --out runs/enrol-$source-p$p-$n
    done
  done
done
# 3c. The same enrolment with the reference's wide trunk (--preset radu, 9,216 features), searched on 0-4, against
#     the ten-class radu run (results/scale: runs/mnist-cma-radu-lm-s0) with its bank rebuilt from 0-4.
R=runs/mnist-cma-radu-lm-s0
done_ runs/mnist04-cma-radu-s0 || slicenet optimise --method cma --preset radu --dataset 'mnist#0-4' --device cpu \
  --quiet --out runs/mnist04-cma-radu-s0
done_ runs/mnist10radu-04bank || slicenet transfer $R --dataset 'mnist#0-4' --tune none --quiet --out runs/mnist10radu-04bank
for source in mnist04-cma-radu-s0 mnist10radu-04bank; do
  for n in 1 5 20 0; do
    k=$([ "$n" -gt 0 ] && echo 1 || echo 0)
    done_ runs/enrol-$source-$n || slicenet enrol runs/$source --dataset 'mnist#5-9' --per-class $n --n-neighbors $k \
      --evaluate-on mnist --out runs/enrol-$source-$n
  done
  done_ runs/$source-p20 || slicenet condense runs/$source --prototypes 20 --out runs/$source-p20
  done_ runs/enrol-$source-p20-20 || slicenet enrol runs/$source-p20 --dataset 'mnist#5-9' --per-class 20 \
    --n-neighbors 1 --evaluate-on mnist --out runs/enrol-$source-p20-20
done
# 4. The backprop side: the same source trunk fine-tuned by backprop (k-NN head on its features, as above).
done_ runs/bp-digits-all || slicenet baseline --dataset digits --init-from $S --head knn --quiet --out runs/bp-digits-all
done_ runs/bp-digits-freeze0 || slicenet baseline --dataset digits --init-from $S --freeze 0 --head knn --quiet \
  --out runs/bp-digits-freeze0
done_ runs/bp-fashion-all || slicenet baseline --dataset fashion-mnist --init-from $S --head knn --quiet \
  --out runs/bp-fashion-all
best() { python -c "import json,sys; s=json.load(open(sys.argv[1])); print(max(s['evaluated'].values(), key=lambda e: e['validation_accuracy'])['run'])" "$1"; }
slicenet report runs/tr-digits-none runs/tr-digits-all runs/tr-digits-1 "$(best runs/tr-digits-random/ga.json)" \
  "$(best runs/tr-digits-ga-mask/ga.json)" "$(best runs/tr-digits-ga-depth/ga.json)" \
  "$(best runs/tr-digits-ga-depth-short/ga.json)" runs/tr-fashion-none \
  runs/tr-fashion-all runs/tr-fashion-1 "$(best runs/tr-fashion-ga-mask/ga.json)" "$(best runs/tr-fashion-ga-depth/ga.json)" \
  runs/bp-* runs/mnist04-cma-s0 runs/mnist10trunk-04bank runs/mnist04-cma-radu-s0 runs/mnist10radu-04bank runs/enrol-* \
  --out "$OUT"
