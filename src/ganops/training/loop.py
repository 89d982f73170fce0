"""The adversarial training loop: D and G steps, EMA generator, quality curve, exact resume, tracking."""
from __future__ import annotations

import copy
import csv
import functools
import hashlib
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ganops import lineage, plots, sampling, tracking
from ganops.metrics.curve import QualityCurve
from ganops.png import png
from ganops.training import checkpoints, losses, schedules
from ganops.training.device import autocast_factory, grad_scaler, resolve_precision, training_process
from ganops.training.augment import diff_augment
from ganops.fileio import atomic_dir, write_bytes
from ganops.networks import Discriminator, Generator, NetConfig, save_generator
from ganops.params import Params, flatten
from ganops.data.prepared import check_labelled, image_shape, load_manifest, load_split

GRID_SEEDS = range(64)  # the fixed latents of every sample grid: seeds 0..63, 8 per row
GRID_COLUMNS = 8
# Latents that the EMA generator's batch-norm statistics are recomputed on (apart from all others).
BN_SEEDS = range(3_000_000, 3_000_000 + 4096)
BN_BATCH = 512
# Logged every log_every steps (averaged over the window); all but img_per_s also go to losses.csv.
METRICS = ("loss_d", "loss_g", "d_real", "d_fake", "grad_norm_d", "grad_norm_g")
CSV_COLUMNS = ("step", "epoch", *METRICS)


def train(
    *,
    params: Params,
    prepared_dir: str | Path,
    classifier_dir: str | Path,
    reference_dir: str | Path,
    model_dir: str | Path,
    checkpoint_dir: str | Path,
    report_dir: str | Path,
) -> dict:
    """Train the GAN of `params.model` with `params.train` on `prepared_dir`; resume when possible.

    Writes (rank 0 only): `model_dir` (the EMA generator, via save_generator), `checkpoint_dir/last.pt`
    and one `epoch_NNN.pt` per epoch, `report_dir/losses.csv`, `report_dir/quality.csv` (the per-epoch
    fid curve, scored with `classifier_dir` against `reference_dir`, which are read only when
    train.curve_samples > 0), `report_dir/samples/epoch_XXX.png`, `report_dir/mlflow_run.json`.
    Under torchrun (WORLD_SIZE > 1) each process trains on its shard with DDP.
    Returns a summary: steps, epochs, resumed_at, images, seconds (this process's loop), img_per_s,
    run_id, device, world_size, precision, fid_curve (the last point, or None), weights_sha256.
    """
    mp, tp = params.model, params.train  # their values were checked when Params was built
    prepared_dir, checkpoint_dir, report_dir = Path(prepared_dir), Path(checkpoint_dir), Path(report_dir)
    manifest = load_manifest(prepared_dir)
    if mp.conditional:
        check_labelled(prepared_dir, manifest, what="a conditional GAN (model.conditional: true)")
    with training_process(tp.device) as proc:
        rank, world, device, main = proc.rank, proc.world, proc.device, proc.rank == 0
        precision = resolve_precision(tp.precision, device, announce=main)
        images, labels = _load_images(prepared_dir)  # memory-mapped: a set larger than RAM trains too
        n, batch = images.shape[0], tp.batch_size
        resolution, channels = image_shape(manifest)
        cfg = NetConfig.from_params(mp, int(manifest["num_classes"]), resolution=resolution, channels=channels)
        steps_per_epoch, total = _run_length(tp, n=n, world=world, prepared_dir=prepared_dir)
        # Loaded before training: a missing classifier must not fail the run after its first epoch.
        curve = QualityCurve(
            classifier_dir, reference_dir, num_samples=tp.curve_samples, z_dim=cfg.z_dim,
            num_classes=cfg.num_classes, conditional=cfg.conditional, device=device,
        ) if tp.curve_samples and main else None

        checkpoints.seed_all(tp.seed)  # identical initial weights on every rank ...
        nets = Nets.build(cfg, tp, precision=precision, device=device)
        checkpoints.seed_all(tp.seed + rank)  # ... then each rank draws its own noise
        config_hash = checkpoints.config_hash(mp, tp, prepared_dir, world, total_steps=total)
        # A shorter run than last.pt's restarts from an epoch snapshot (then it is a run of its own).
        state, same_run = checkpoints.load(checkpoint_dir, config_hash, total_steps=total, rank=rank, world=world)
        if state is not None:
            nets.load_state_dict(state)
            checkpoints.set_rng_state(state["rng"][rank])
        start = state["step"] if state else 0
        log = Log.restore(state, device)
        # Lineage is read once, at the start: the model's metadata names what it was trained from.
        tags = lineage.lineage_tags(manifest_dir=prepared_dir, params=params) if main else {}
        tracker = _open_tracker(main, state, same_run=same_run, params=params, tags=tags, report_dir=report_dir)
        G_train, D_train = (DDP(m, device_ids=[device.index] if device.type == "cuda" else None)
                            if world > 1 else m for m in (nets.G, nets.D))
        fixed = FixedLatents.build(cfg, device)
        autocast = autocast_factory(precision, device)
        augment = functools.partial(diff_augment, policies=tp.augment)
        bar = tqdm(total=total, initial=start, file=sys.stderr, disable=not main, unit="step", dynamic_ncols=True)
        images_per_step = batch * tp.d_steps * world
        t_loop = time.perf_counter()
        order_epoch = -1
        try:
            for step in range(start, total):
                epoch, i = divmod(step, steps_per_epoch)
                if epoch != order_epoch:
                    order, order_epoch = _epoch_order(tp.seed, epoch, n, rank, world, "cpu"), epoch
                    bar.set_description(f"epoch {epoch + 1}/{tp.epochs}")
                schedules.set_lr(((nets.opt_g, tp.lr_g), (nets.opt_d, tp.lr_d)),
                                 schedules.lr_scale(tp, step=step, total=total))

                # Discriminator step(s); the last one's fakes are reused by the generator step.
                for k in range(tp.d_steps):
                    idx = order[(i * tp.d_steps + k) * batch : (i * tp.d_steps + k + 1) * batch]
                    real = _real_batch(images, idx, device)
                    y = labels[idx].to(device) if cfg.conditional else None
                    z = torch.randn(batch, cfg.z_dim, device=device)
                    with torch.set_grad_enabled(k == tp.d_steps - 1), autocast():
                        fake = G_train(z, y)
                    r1 = tp.r1_gamma > 0 and (step * tp.d_steps + k) % tp.r1_every == 0
                    loss_d, d_real, d_fake = _d_step(
                        D_train=D_train, D=nets.D, opt_d=nets.opt_d, scaler=nets.scaler_d, tp=tp, real=augment(real),
                        fake=augment(fake.detach()), labels=y, autocast=autocast, r1=r1)
                grad_norm_d = _grad_norm(nets.D)
                # Generator step, then the EMA generator follows it.
                loss_g, grad_norm_g = _g_step(nets, tp=tp, fake=fake, labels=y, autocast=autocast, augment=augment)
                _ema_update(nets.G_ema, nets.G, schedules.ema_beta(tp, step=step, batch=batch * world),
                            copy_bn=tp.ema_bn == "copy")

                # Logging: window sums stay on the device; one sync per log. Every epoch's end closes
                # a window too, so a run extended after its last epoch logs what a longer run would.
                log.window += torch.stack([loss_d, loss_g, d_real, d_fake, grad_norm_d, grad_norm_g]).float()
                done, epoch_end = step + 1, i == steps_per_epoch - 1
                bar.update(1)
                if done % tp.log_every == 0 or epoch_end or done == total:
                    count = done - _window_start(step, tp.log_every, steps_per_epoch)
                    values = log.close_window(step=done, epoch=epoch + 1, count=count, images_per_step=images_per_step)
                    tracker.log_metrics(values, step=done)
                    bar.set_postfix(loss_d=f"{values['loss_d']:.3f}", loss_g=f"{values['loss_g']:.3f}",
                                    img_s=f"{values['img_per_s']:.0f}")
                if epoch_end or done == total:
                    _end_epoch(nets.G_ema, epoch=epoch + 1, step=done, tp=tp, fixed=fixed, log=log, curve=curve,
                               tracker=tracker, bar=bar, samples_dir=report_dir / "samples" if main else None)

                # Checkpoint last, so a resumed run restarts exactly after this step; each epoch's end
                # is also kept as a snapshot that a shorter run restarts from.
                if done % tp.checkpoint_every == 0 or done == total or epoch_end:
                    tracker.flush()  # metrics up to here survive a crash; later ones are logged again
                    rng = checkpoints.gather(checkpoints.rng_state(), world)
                    if main:
                        checkpoints.save(checkpoint_dir / checkpoints.CHECKPOINT_NAME, state={
                            "config_hash": config_hash, "step": done, "run_id": tracker.run_id,
                            **nets.state_dict(), "rng": rng, **log.state_dict(),
                        }, snapshot=checkpoint_dir / checkpoints.snapshot_name(epoch + 1) if epoch_end else None)
            seconds = time.perf_counter() - t_loop
            bar.close()
            if main:
                _write_outputs(G_ema=nets.G_ema, tags=tags, manifest=manifest, model_dir=Path(model_dir),
                               report_dir=report_dir, log=log)
                tracker.log_artifact(report_dir / "losses.csv", "train")
                tracker.close("FINISHED")
        except BaseException as e:
            bar.close()
            tracker.close("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
            raise
    steps = total - start
    return {
        "steps": total, "epochs": total / steps_per_epoch, "resumed_at": start,
        "images": steps * images_per_step, "seconds": seconds,
        "img_per_s": steps * images_per_step / seconds if seconds > 0 and steps else 0.0,
        "run_id": tracker.run_id, "device": str(device), "world_size": world, "precision": precision,
        "fid_curve": log.curve_rows[-1]["fid_curve"] if log.curve_rows else None,
        # This rank's: under DDP every rank's must agree.
        "weights_sha256": _weights_sha256(nets.G, nets.D, nets.G_ema),
    }


@dataclass
class Nets:
    """G, D, the EMA G, their optimizers and loss scalers: what a checkpoint restores."""

    G: Generator
    D: Discriminator
    G_ema: Generator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    scaler_g: torch.amp.GradScaler
    scaler_d: torch.amp.GradScaler
    KEYS: ClassVar[tuple[str, ...]] = ("G", "D", "G_ema", "opt_g", "opt_d", "scaler_g", "scaler_d")

    @classmethod
    def build(cls, cfg: NetConfig, tp, *, precision: str, device: torch.device) -> Nets:
        G, D = Generator(cfg).to(device), Discriminator(cfg).to(device)
        return cls(
            G=G, D=D, G_ema=copy.deepcopy(G).eval().requires_grad_(False),
            opt_g=torch.optim.Adam(G.parameters(), lr=tp.lr_g, betas=tuple(tp.betas_g), fused=True),
            opt_d=torch.optim.Adam(D.parameters(), lr=tp.lr_d, betas=tuple(tp.betas_d), fused=True),
            # One loss scaler per network (fp16 only; no-ops otherwise): their gradients differ in scale.
            scaler_g=grad_scaler(precision, device), scaler_d=grad_scaler(precision, device),
        )

    def state_dict(self) -> dict:
        return {key: getattr(self, key).state_dict() for key in self.KEYS}

    def load_state_dict(self, state: dict) -> None:
        for key in self.KEYS:
            getattr(self, key).load_state_dict(state[key])


@dataclass
class Log:
    """What the run has logged so far (losses.csv rows, the fid curve, a grid per epoch) and the open
    logging window's sums; all of it goes into checkpoints, so a resumed run writes the same files."""

    rows: list[dict]
    curve_rows: list[dict]
    grids: dict[int, torch.Tensor]
    window: torch.Tensor
    timed_from: int  # img/s counts the steps since this one (after a resume, fewer than the window's)
    t_window: float = field(default_factory=time.perf_counter)

    @classmethod
    def restore(cls, state: dict | None, device: torch.device) -> Log:
        if state is None:
            return cls(rows=[], curve_rows=[], grids={}, window=torch.zeros(len(METRICS), device=device),
                       timed_from=0)
        return cls(rows=state["rows"], curve_rows=state["curve_rows"], grids=state["grids"],
                   window=state["window"].to(device), timed_from=state["step"])

    def state_dict(self) -> dict:
        return {"rows": self.rows, "curve_rows": self.curve_rows, "grids": self.grids, "window": self.window.cpu()}

    def close_window(self, *, step: int, epoch: int, count: int, images_per_step: int) -> dict[str, float]:
        """The window's means as a losses.csv row; returned with img_per_s for MLflow."""
        values = dict(zip(METRICS, (self.window / count).tolist()))
        self.window.zero_()
        now = time.perf_counter()
        rate = (step - self.timed_from) * images_per_step / (now - self.t_window)
        self.t_window, self.timed_from = now, step
        self.rows.append({"step": step, "epoch": epoch, **values})
        return {**values, "img_per_s": rate}


def _run_length(tp, *, n: int, world: int, prepared_dir: Path) -> tuple[int, int]:
    """(steps per epoch, total steps): every rank gets n // world images; train.max_steps caps the total."""
    steps_per_epoch = n // world // tp.batch_size // tp.d_steps
    if steps_per_epoch == 0:
        raise ValueError(
            f"{prepared_dir} has {n} training images: too few for train.batch_size={tp.batch_size} x "
            f"train.d_steps={tp.d_steps} on {world} process(es); lower train.batch_size"
        )
    total = tp.epochs * steps_per_epoch
    return steps_per_epoch, min(total, tp.max_steps) if tp.max_steps else total


@dataclass(frozen=True)
class FixedLatents:
    """The latents of every sample grid and of the EMA G's batch-norm statistics (never random)."""

    grid_z: torch.Tensor
    grid_y: torch.Tensor | None
    bn_z: torch.Tensor
    bn_y: torch.Tensor | None

    @classmethod
    def build(cls, cfg: NetConfig, device: torch.device) -> FixedLatents:
        return cls(
            grid_z=torch.from_numpy(sampling.latents(GRID_SEEDS, cfg.z_dim)).to(device),
            grid_y=_grid_labels(cfg, device),
            bn_z=torch.from_numpy(sampling.latents(BN_SEEDS, cfg.z_dim)).to(device),
            bn_y=torch.arange(len(BN_SEEDS), device=device) % cfg.num_classes if cfg.conditional else None,
        )


def _g_step(nets: Nets, *, tp, fake: torch.Tensor, labels: torch.Tensor | None, autocast,
            augment) -> tuple[torch.Tensor, torch.Tensor]:
    """One generator update through the plain D (no DDP hooks: D's parameters get no gradient);
    returns (loss, gradient norm), detached."""
    nets.D.requires_grad_(False)
    with autocast():
        loss = losses.g_loss(tp.loss, nets.D(augment(fake), labels).float())
    nets.opt_g.zero_grad(set_to_none=True)
    nets.scaler_g.scale(loss).backward()
    nets.scaler_g.unscale_(nets.opt_g)
    grad_norm = _grad_norm(nets.G)
    nets.scaler_g.step(nets.opt_g)
    nets.scaler_g.update()
    nets.D.requires_grad_(True)
    return loss.detach(), grad_norm


def _end_epoch(G_ema: torch.nn.Module, *, epoch: int, step: int, tp, fixed: FixedLatents, log: Log,
               curve: QualityCurve | None, tracker, bar, samples_dir: Path | None) -> None:
    """The EMA G's batch-norm statistics, its grid of the epoch (written by rank 0) and fid_curve point."""
    if tp.ema_bn == "recompute":
        _recompute_bn_stats(G_ema, fixed.bn_z, fixed.bn_y)
    log.grids[epoch] = _sample_grid(G_ema, fixed.grid_z, fixed.grid_y)
    if samples_dir is not None:
        _write_grid(samples_dir, epoch, log.grids[epoch])
        tracker.log_image(log.grids[epoch].numpy(), key="samples", step=step)
    if curve is not None:
        point = {"step": step, "epoch": epoch, "fid_curve": curve.fid(G_ema)}
        log.curve_rows = [r for r in log.curve_rows if r["step"] != step] + [point]
        tracker.log_metrics({"fid_curve": point["fid_curve"]}, step=step)
        bar.write(f"epoch {epoch}: fid_curve {point['fid_curve']:.2f} ({tp.curve_samples} samples)",
                  file=sys.stderr)


def _weights_sha256(*modules: torch.nn.Module) -> str:
    """SHA-256 of the modules' parameters (names and bytes, in order). Buffers are left out: batch-norm
    running statistics are each rank's own under DDP (rank 0's are the ones saved)."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.named_parameters():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _window_start(step: int, log_every: int, steps_per_epoch: int) -> int:
    """Where the logging window that ends after `step` began: the last multiple of log_every or
    epoch end at or before `step` (a window never spans two epochs)."""
    return max(step // log_every * log_every, step // steps_per_epoch * steps_per_epoch)


def _load_images(prepared_dir: Path) -> tuple[np.ndarray, torch.Tensor]:
    """The training split: images memory-mapped (uint8 [N, R, R] or [N, R, R, 3]: each batch reads only
    its own rows, so peak memory does not grow with the set) and int64 labels [N] on the CPU."""
    images, labels = load_split(prepared_dir, "train", mmap=True)
    if images.dtype != np.uint8 or not (images.ndim == 3 or (images.ndim == 4 and images.shape[3] == 3)):
        raise ValueError(
            f"{prepared_dir}/train_images.npy is {images.dtype} {images.shape}, expected uint8 [N, R, R] "
            "or [N, R, R, 3]: rerun the prepare stage (dvc repro prepare)"
        )
    return images, torch.from_numpy(labels)


def _real_batch(images: np.ndarray, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows `idx` (in that order) of the mapped images as float [B, C, R, R] in [-1, 1] on `device`."""
    batch = torch.from_numpy(np.ascontiguousarray(images[idx.numpy()])).to(device)
    batch = batch.unsqueeze(1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
    return batch.float() / 127.5 - 1.0


def _epoch_order(seed: int, epoch: int, n: int, rank: int, world: int, device) -> torch.Tensor:
    """This rank's image indices for `epoch`: a permutation from (seed, epoch) alone, so a resumed
    run sees the same order; ranks take interleaved, equally long shards as DistributedSampler does."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = n // world
    return torch.from_numpy(perm[rank::world][:per_rank]).to(device)


def _d_step(*, D_train, D, opt_d, scaler, tp, real: torch.Tensor, fake: torch.Tensor,
            labels: torch.Tensor | None, autocast, r1: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One discriminator update on real and (detached) fake; returns (loss, d_real, d_fake), detached.

    Real and fake pass through D separately, as in Radford et al.: with d_norm batch each is
    normalised by its own batch statistics. `r1`: add the lazy R1 penalty on this step.
    """
    with autocast():
        real_logits, fake_logits = D_train(real, labels).float(), D_train(fake, labels).float()
    loss = losses.d_loss(tp.loss, real_logits, fake_logits)
    # Penalties go through the plain D: their double-backward graph joins the same one backward,
    # and DDP averages the summed gradient as usual.
    if tp.loss == "wgan_gp":
        with autocast():
            gp = losses.gradient_penalty(D, real, fake, labels)
        loss = loss + tp.gp_weight * gp
    if r1:
        with autocast():
            penalty = losses.r1_penalty(D, real, labels)
        loss = loss + tp.r1_gamma / 2 * tp.r1_every * penalty
    opt_d.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt_d)
    scaler.update()
    if tp.loss in ("minimax", "non_saturating"):
        # As probabilities D(x) = sigmoid(logit) for the BCE losses; raw critic scores otherwise.
        real_logits, fake_logits = torch.sigmoid(real_logits), torch.sigmoid(fake_logits)
    return loss.detach(), real_logits.detach().mean(), fake_logits.detach().mean()


def _grad_norm(module: torch.nn.Module) -> torch.Tensor:
    """L2 norm of all of the module's gradients together (0-dim tensor, no sync)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(module.parameters()).device)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, beta: float, *, copy_bn: bool) -> None:
    """ema = beta * ema + (1 - beta) * model for parameters; batch-norm statistics copied from the
    raw G only when `copy_bn` (else they are recomputed for the EMA weights before each use)."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - beta)
    if copy_bn:
        for b_ema, b in zip(ema.buffers(), model.buffers()):
            b_ema.copy_(b)


@torch.no_grad()
def _recompute_bn_stats(G_ema: torch.nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> None:
    """Batch-norm statistics of the EMA weights' own activations, from fixed latents (BigGAN's
    "standing statistics"). The raw G's running statistics describe other weights: used with the
    EMA weights they shift every feature map. Consumes no random numbers; deterministic."""
    norms = [m for m in G_ema.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the batches below
    G_ema.train()
    for i in range(0, len(z), BN_BATCH):
        G_ema(z[i : i + BN_BATCH], None if y is None else y[i : i + BN_BATCH])
    G_ema.eval()
    for bn in norms:
        bn.momentum = 0.1


def _grid_labels(cfg: NetConfig, device) -> torch.Tensor | None:
    """Conditional grids show one class per row (row r: class r mod num_classes)."""
    if not cfg.conditional:
        return None
    rows = torch.arange(len(GRID_SEEDS)) // GRID_COLUMNS
    return (rows % cfg.num_classes).to(device)


@torch.no_grad()
def _sample_grid(G_ema: torch.nn.Module, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """The EMA generator's images of the fixed grid latents, tiled: uint8 tensor [H, W] on the CPU."""
    out = G_ema(z, y).float().cpu().numpy()
    return torch.from_numpy(sampling.grid(sampling.to_uint8(out), ncol=GRID_COLUMNS))


def _write_grid(directory: Path, epoch: int, image: torch.Tensor) -> None:
    write_bytes(directory / f"epoch_{epoch:03d}.png", png(image.numpy()))


def _write_outputs(*, G_ema: torch.nn.Module, tags: dict, manifest: dict, model_dir: Path, report_dir: Path,
                   log: Log) -> None:
    """models/gan (EMA generator + lineage), every sample grid, losses.csv, quality.csv."""
    model_lineage = {key: tags[key] for key in ("git_commit", "data_manifest_sha256", "params_sha256",
                                          "params_sha256_sections")}
    # No MLflow run id here: the run is an event, not a cause; the same weights give the same bytes.
    model_lineage.update(dataset=manifest.get("dataset", ""))
    save_generator(model_dir, G_ema, extra={
        "lineage": model_lineage, "classes": manifest.get("classes"), "dataset": manifest.get("dataset", ""),
    })
    # All grids, from the checkpoint too: DVC empties samples/ before a resumed run.
    with atomic_dir(report_dir / "samples") as tmp:
        for epoch, image in log.grids.items():
            _write_grid(tmp, epoch, image)
    _write_losses_csv(report_dir / "losses.csv", log.rows)
    _write_quality_csv(report_dir / "quality.csv", log.curve_rows)
    write_bytes(report_dir / "quality.png", plots.curves_png(
        [r["step"] for r in log.curve_rows], {"fid_curve": [r["fid_curve"] for r in log.curve_rows]},
        title=f"fid_curve: EMA generator, {len(log.curve_rows)} epoch(s)"))
    # The same curves as a PNG: dvc plots' HTML needs vega from a CDN, a PNG renders offline.
    steps = [row["step"] for row in log.rows]
    write_bytes(report_dir / "losses.png", plots.curves_png(
        steps, {m: [row[m] for row in log.rows] for m in ("loss_d", "loss_g")}, title="losses"))


def _write_losses_csv(path: Path, rows: list[dict]) -> None:
    """losses.csv for `dvc plots`: same rows -> same bytes (fixed columns, 6 significant digits)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([row["step"], row["epoch"], *(f"{row[m]:.6g}" for m in METRICS)])
    write_bytes(path, buf.getvalue().encode())


def _write_quality_csv(path: Path, rows: list[dict]) -> None:
    """quality.csv for `dvc plots`: step, epoch, fid_curve (the header alone when the curve is off)."""
    lines = ["step,epoch,fid_curve", *(f"{r['step']},{r['epoch']},{r['fid_curve']:.6g}" for r in rows)]
    write_bytes(path, ("\n".join(lines) + "\n").encode())


def _open_tracker(main: bool, state: dict | None, *, same_run: bool, params: Params, tags: dict,
                  report_dir: Path):
    """Rank 0: continue last.pt's MLflow run, or start one (params, lineage tags; when restarting from
    an epoch snapshot, the snapshot's logged metrics first); other ranks: a no-op tracker."""
    if not main:
        return tracking.NullTracker()
    tracker = None
    if state is not None and same_run:
        try:
            tracker = tracking.Tracker.resume(state["run_id"])
        except tracking.TrackingError as e:
            print(f"train: {e}; logging the rest of this run into a new MLflow run", file=sys.stderr)
    if tracker is None:
        tracker = tracking.Tracker.start(tags=tags, run_name=tracking.run_name(params))
        tracker.log_params(flatten(params))
        for row in state["rows"] if state else []:
            tracker.log_metrics({m: row[m] for m in METRICS}, step=row["step"])
        for row in state["curve_rows"] if state else []:
            tracker.log_metrics({"fid_curve": row["fid_curve"]}, step=row["step"])
    tracking.write_run_id(report_dir / "mlflow_run.json", tracker.run_id)
    return tracker
