"""Score a training checkpoint's EMA generator with Inception FID (Lucic et al. protocol) and the
domain fid, outside the pipeline: for a run that cannot finish (e.g. a session ending mid-run).

    python study/score_checkpoint.py CHECKPOINT --set model.d_norm=batch model.g_upsample=resize \
        [--reference data/reference] [--inception-reference data/inception_reference] \
        [--classifier models/classifier] [--samples 10000]

The model params (--set, as in `dvc exp run -S`) must be those it was trained with. Prints one
JSON line: step, epochs, weights, fid (domain, 10k), fid_inception. Batch-norm statistics are
recomputed on the training loop's fixed latents first, as the loop does for the EMA weights at epoch
ends (--weights G scores the raw generator the same way).
The Inception statistics come from the inception_reference stage, made with evaluate.inception: true
and the evaluate.inception_weights of params.yaml (or --set).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from ganops.metrics import distances, inception
from ganops import params as params_mod
from ganops.metrics.classifier import extract, load_classifier
from ganops.metrics.evaluate import generate
from ganops.metrics.inception_reference import load_inception_reference
from ganops.networks import Generator, NetConfig
from ganops.sampling import latents
from ganops.training.loop import BN_SEEDS, _recompute_bn_stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--set", nargs="*", default=[], help="section.key=value overrides of params.yaml")
    ap.add_argument("--reference", default="data/reference")
    ap.add_argument("--inception-reference", default="data/inception_reference")
    ap.add_argument("--classifier", default="models/classifier")
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--steps-per-epoch", type=int, default=468)
    ap.add_argument("--weights", choices=("G_ema", "G"), default="G_ema",
                    help="the EMA generator (what the pipeline exports) or the raw one")
    args = ap.parse_args()
    raw = yaml.safe_load(Path("params.yaml").read_text())
    for item in args.set:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = yaml.safe_load(value)
    p = params_mod.parse(raw)
    mp, ep = p.model, p.evaluate
    ref = Path(args.reference)
    # Checked before the long work: statistics present, of the configured weights and the same data.
    inception_ref = load_inception_reference(
        args.inception_reference, inception_weights=ep.inception_weights,
        data_manifest_sha256=json.loads((ref / "reference.json").read_text())["data_manifest_sha256"])
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    G = Generator(NetConfig.from_params(mp, 10))
    G.load_state_dict(state[args.weights])
    bn_y = torch.arange(len(BN_SEEDS)) % 10 if mp.conditional else None
    _recompute_bn_stats(G, torch.from_numpy(latents(BN_SEEDS, mp.z_dim)), bn_y)
    G.eval()
    images, labels = generate(G, num_samples=args.samples, seed=ep.seed, batch_size=ep.batch_size)
    classifier, _ = load_classifier(args.classifier)
    feats, predicted = extract(classifier, images, batch_size=ep.batch_size)
    out = {"checkpoint": args.checkpoint, "step": state["step"], "epochs": state["step"] / args.steps_per_epoch,
           "weights": args.weights,
           "fid": distances.frechet_distance(*distances.gaussian_stats(feats), np.load(ref / "test_mu.npy"),
                                     np.load(ref / "test_sigma.npy"))}
    if labels is not None:
        out["class_accuracy"] = float((predicted == labels).mean())
    net = inception.InceptionPool3(inception_ref.weights)
    mu, sigma = distances.gaussian_stats(net.features(images))
    out["fid_inception"] = distances.frechet_distance(mu, sigma, inception_ref.test_mu, inception_ref.test_sigma)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
