"""The adversarial training loop: D and G steps, EMA generator, exact resume from checkpoints, tracking."""
from __future__ import annotations

import contextlib
import copy
import csv
import functools
import hashlib
import io
import json
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ganops import losses, plots, sampling, tracking
from ganops.fileio import atomic_dir, atomic_path, write_bytes
from ganops.networks import Discriminator, Generator, NetConfig, save_generator
from ganops.params import Params, flatten
from ganops.prepared import load_manifest, load_split, manifest_hash

CHECKPOINT_NAME = "last.pt"
GRID_SEEDS = range(64)  # the fixed latents of every sample grid: seeds 0..63, 8 per row
GRID_COLUMNS = 8
# Logged every log_every steps (averaged over the window); all but img_per_s also go to losses.csv.
METRICS = ("loss_d", "loss_g", "d_real", "d_fake", "grad_norm_d", "grad_norm_g")
CSV_COLUMNS = ("step", "epoch", *METRICS)
# The code whose change makes an old checkpoint a different run (besides params and data).
_SOURCES = ("training.py", "losses.py", "networks.py")


def train(
    *,
    params: Params,
    prepared_dir: str | Path,
    model_dir: str | Path,
    checkpoint_dir: str | Path,
    report_dir: str | Path,
) -> dict:
    """Train the GAN of `params.model` with `params.train` on `prepared_dir`; resume when possible.

    Writes (rank 0 only): `model_dir` (the EMA generator, via save_generator), `checkpoint_dir/last.pt`,
    `report_dir/losses.csv`, `report_dir/samples/epoch_XXX.png`, `report_dir/mlflow_run.json`.
    Under torchrun (WORLD_SIZE > 1) each process trains on its shard with DDP.
    Returns a summary: steps, epochs, resumed_at, images, seconds (this process's loop), img_per_s,
    run_id, device, world_size.
    """
    mp, tp = params.model, params.train
    _check(tp)
    prepared_dir, checkpoint_dir, report_dir = Path(prepared_dir), Path(checkpoint_dir), Path(report_dir)
    manifest = load_manifest(prepared_dir)
    with _training_process() as (rank, world, device):
        main = rank == 0
        images, labels = _load_images(prepared_dir, device)
        n, batch = images.shape[0], tp.batch_size
        cfg = NetConfig(mp.arch, mp.z_dim, mp.width, mp.conditional, int(manifest["num_classes"]))
        steps_per_epoch = n // world // batch // tp.d_steps  # every rank gets n // world images
        if steps_per_epoch == 0:
            raise ValueError(
                f"{prepared_dir} has {n} training images: too few for train.batch_size={batch} x "
                f"train.d_steps={tp.d_steps} on {world} process(es); lower train.batch_size"
            )
        total = tp.epochs * steps_per_epoch
        if tp.max_steps:
            total = min(total, tp.max_steps)

        # Identical initial weights on every rank; then each rank draws its own noise.
        _seed_all(tp.seed)
        G, D = Generator(cfg).to(device), Discriminator(cfg).to(device)
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        opt_g = torch.optim.Adam(G.parameters(), lr=tp.lr_g, betas=(tp.beta1, tp.beta2), fused=True)
        opt_d = torch.optim.Adam(D.parameters(), lr=tp.lr_d, betas=(tp.beta1, tp.beta2), fused=True)
        _seed_all(tp.seed + rank)

        config_hash = _config_hash(params, prepared_dir, world)
        ckpt_path = checkpoint_dir / CHECKPOINT_NAME
        state = _load_checkpoint(ckpt_path, config_hash, announce=main)
        if state is not None:
            for module, key in ((G, "G"), (D, "D"), (G_ema, "G_ema"), (opt_g, "opt_g"), (opt_d, "opt_d")):
                module.load_state_dict(state[key])
            _set_rng_state(state["rng"][rank])
        start = state["step"] if state else 0
        rows: list[dict] = state["rows"] if state else []
        grids: dict[int, torch.Tensor] = state["grids"] if state else {}
        window = state["window"].to(device) if state else torch.zeros(len(METRICS), device=device)

        # Lineage is read once, at the start: the model's metadata names what it was trained from.
        tags = tracking.lineage_tags(manifest_dir=prepared_dir, params=params) if main else {}
        tracker = _open_tracker(main, state, params=params, tags=tags, report_dir=report_dir)
        ddp_devices = [device.index] if device.type == "cuda" else None
        G_train = DDP(G, device_ids=ddp_devices) if world > 1 else G
        D_train = DDP(D, device_ids=ddp_devices) if world > 1 else D
        grid_z = torch.from_numpy(sampling.latents(GRID_SEEDS, cfg.z_dim)).to(device)
        grid_y = _grid_labels(cfg, device)
        # bf16 autocast on CUDA, and on the CPU when asked; a fresh context per use (an autocast
        # object is not re-entrant).
        autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16,
                                     enabled=device.type == "cuda" or _cpu_bf16(tp, main))
        bar = tqdm(total=total, initial=start, file=sys.stderr, disable=not main, unit="step",
                   dynamic_ncols=True)
        images_per_step = batch * tp.d_steps * world
        t_loop = t_window = time.perf_counter()
        timed = 0  # steps since t_window (after a resume, fewer than the window's count)
        order_epoch = -1
        try:
            for step in range(start, total):
                epoch, i = divmod(step, steps_per_epoch)
                if epoch != order_epoch:
                    order, order_epoch = _epoch_order(tp.seed, epoch, n, rank, world, device), epoch
                    bar.set_description(f"epoch {epoch + 1}/{tp.epochs}")

                # Discriminator step(s); the last one's fakes are reused by the generator step.
                for k in range(tp.d_steps):
                    idx = order[(i * tp.d_steps + k) * batch : (i * tp.d_steps + k + 1) * batch]
                    real = images[idx].float() / 127.5 - 1.0
                    y = labels[idx] if cfg.conditional else None
                    z = torch.randn(batch, cfg.z_dim, device=device)
                    with torch.set_grad_enabled(k == tp.d_steps - 1), autocast():
                        fake = G_train(z, y)
                    loss_d, d_real, d_fake = _d_step(D_train=D_train, D=D, opt_d=opt_d, tp=tp, real=real,
                                                     fake=fake.detach(), labels=y, autocast=autocast)
                grad_norm_d = _grad_norm(D)

                # Generator step through the plain D (no DDP hooks: D's parameters get no gradient).
                D.requires_grad_(False)
                with autocast():
                    loss_g = losses.g_loss(tp.loss, D(fake, y).float())
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                grad_norm_g = _grad_norm(G)
                opt_g.step()
                D.requires_grad_(True)

                _ema_update(G_ema, G, _ema_decay(tp.ema_decay, step))

                # Logging: window sums stay on the device; one sync per log.
                window += torch.stack([loss_d, loss_g.detach(), d_real, d_fake,
                                       grad_norm_d, grad_norm_g]).float()
                done, timed = step + 1, timed + 1
                bar.update(1)
                if done % tp.log_every == 0 or done == total:
                    count = done - (done - 1) // tp.log_every * tp.log_every
                    values = dict(zip(METRICS, (window / count).tolist()))
                    window.zero_()
                    now = time.perf_counter()
                    rate, t_window, timed = timed * images_per_step / (now - t_window), now, 0
                    rows.append({"step": done, "epoch": epoch + 1, **values})
                    tracker.log_metrics({**values, "img_per_s": rate}, step=done)
                    bar.set_postfix(loss_d=f"{values['loss_d']:.3f}", loss_g=f"{values['loss_g']:.3f}",
                                    img_s=f"{rate:.0f}")
                if i == steps_per_epoch - 1 or done == total:
                    grids[epoch + 1] = _sample_grid(G_ema, grid_z, grid_y)
                    if main:
                        _write_grid(report_dir / "samples", epoch + 1, grids[epoch + 1])
                        tracker.log_image(grids[epoch + 1].numpy(), key="samples", step=done)

                # Checkpoint last, so a resumed run restarts exactly after this step.
                if done % tp.checkpoint_every == 0 or done == total:
                    tracker.flush()  # metrics up to here survive a crash; later ones are logged again
                    rng = _gather(_rng_state(), world)
                    if main:
                        _save_checkpoint(ckpt_path, {
                            "config_hash": config_hash, "step": done, "run_id": tracker.run_id,
                            "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
                            "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "rng": rng,
                            "rows": rows, "grids": grids, "window": window.cpu(),
                        })
            seconds = time.perf_counter() - t_loop
            bar.close()
            if main:
                _write_outputs(G_ema=G_ema, tags=tags, manifest=manifest, run_id=tracker.run_id,
                               model_dir=Path(model_dir), report_dir=report_dir, rows=rows, grids=grids)
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
        "run_id": tracker.run_id, "device": str(device), "world_size": world,
    }


def _cpu_bf16(tp, announce: bool) -> bool:
    """train.cpu_bf16, unless this CPU has no native bf16: emulated bf16 is slower than fp32."""
    if not tp.cpu_bf16:
        return False
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return True
    if announce:
        print("train: train.cpu_bf16 is set but this CPU has no native bf16; training in fp32",
              file=sys.stderr)
    return False


def _check(tp) -> None:
    """Reject train params that would silently misbehave, naming the key and the fix."""
    if tp.loss not in losses.LOSSES:
        raise losses.unknown_loss(tp.loss)
    for key in ("epochs", "batch_size", "d_steps", "log_every", "checkpoint_every"):
        if getattr(tp, key) < 1:
            raise ValueError(f"train.{key} must be >= 1 in params.yaml, got {getattr(tp, key)}")
    if tp.max_steps < 0:
        raise ValueError(f"train.max_steps must be >= 0 (0 = all epochs), got {tp.max_steps}")
    if not 0.0 <= tp.ema_decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1), got {tp.ema_decay}")


@contextlib.contextmanager
def _training_process():
    """Yield (rank, world size, device): joins the torchrun process group when WORLD_SIZE > 1 and
    makes the CPU deterministic; on exit leaves the group and the caller's (a test's) settings."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    saved = (torch.are_deterministic_algorithms_enabled(),
             torch.utils.deterministic.fill_uninitialized_memory)
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
    else:
        device = torch.device("cpu")
        # Bit-identical runs on the CPU: what the kill-and-resume guarantee rests on. Filling every
        # new tensor with NaN (a debugging aid of this mode) costs ~15% here and changes no result.
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        if world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        yield (dist.get_rank() if world > 1 else 0), world, device
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.utils.deterministic.fill_uninitialized_memory = saved[1]
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _load_images(prepared_dir: Path, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole training split on the device: uint8 [N, 1, 28, 28] and int64 labels [N]."""
    images, labels = load_split(prepared_dir, "train")
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.dtype != np.uint8:
        raise ValueError(
            f"{prepared_dir}/train_images.npy is {images.dtype} {images.shape}, expected uint8 "
            "[N, 28, 28]: rerun the prepare stage (dvc repro prepare)"
        )
    return torch.from_numpy(images).unsqueeze(1).to(device), torch.from_numpy(labels).to(device)


def _epoch_order(seed: int, epoch: int, n: int, rank: int, world: int, device) -> torch.Tensor:
    """This rank's image indices for `epoch`: a permutation from (seed, epoch) alone, so a resumed
    run sees the same order; ranks take interleaved, equally long shards as DistributedSampler does."""
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    per_rank = n // world
    return torch.from_numpy(perm[rank::world][:per_rank]).to(device)


def _d_step(*, D_train, D, opt_d, tp, real: torch.Tensor, fake: torch.Tensor,
            labels: torch.Tensor | None, autocast) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One discriminator update on real and (detached) fake; returns (loss, d_real, d_fake), detached."""
    with autocast():
        real_logits, fake_logits = D_train(real, labels).float(), D_train(fake, labels).float()
    loss = losses.d_loss(tp.loss, real_logits, fake_logits)
    if tp.loss == "wgan_gp":
        # Through the plain D: its double-backward graph joins the same one backward, and DDP
        # averages the summed gradient as usual.
        with autocast():
            gp = losses.gradient_penalty(D, real, fake, labels)
        loss = loss + tp.gp_weight * gp
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
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


def _ema_decay(decay: float, step: int) -> float:
    """The EMA decay at `step`: ramps up as (1 + step) / (10 + step) so the random initial weights
    fade out of short runs too (0.999 alone would keep ~10% of them after 2,300 steps)."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model for parameters; buffers (batch-norm stats) copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


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
    write_bytes(directory / f"epoch_{epoch:03d}.png", sampling.png_bytes(image.numpy()))


def _write_outputs(*, G_ema: torch.nn.Module, tags: dict, manifest: dict, run_id: str, model_dir: Path,
                   report_dir: Path, rows: list[dict], grids: dict[int, torch.Tensor]) -> None:
    """models/gan (EMA generator + lineage), every sample grid, losses.csv."""
    lineage = {key: tags[key] for key in ("git_commit", "data_manifest_sha256", "params_sha256")}
    lineage.update(dataset=manifest.get("dataset", ""), mlflow_run_id=run_id)
    save_generator(model_dir, G_ema, extra={
        "lineage": lineage, "classes": manifest.get("classes"), "dataset": manifest.get("dataset", ""),
    })
    # All grids, from the checkpoint too: DVC empties samples/ before a resumed run.
    with atomic_dir(report_dir / "samples") as tmp:
        for epoch, image in grids.items():
            _write_grid(tmp, epoch, image)
    _write_losses_csv(report_dir / "losses.csv", rows)
    # The same curves as a PNG: dvc plots' HTML needs vega from a CDN, a PNG renders offline.
    steps = [row["step"] for row in rows]
    write_bytes(report_dir / "losses.png", plots.curves_png(
        steps, {m: [row[m] for row in rows] for m in ("loss_d", "loss_g")}, title="losses"))


def _write_losses_csv(path: Path, rows: list[dict]) -> None:
    """losses.csv for `dvc plots`: same rows -> same bytes (fixed columns, 6 significant digits)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([row["step"], row["epoch"], *(f"{row[m]:.6g}" for m in METRICS)])
    write_bytes(path, buf.getvalue().encode())


def _open_tracker(main: bool, state: dict | None, *, params: Params, tags: dict, report_dir: Path):
    """Rank 0: continue the checkpoint's MLflow run or start one (params, lineage tags); others: no-op."""
    if not main:
        return tracking.NullTracker()
    tracker = None
    if state is not None:
        try:
            tracker = tracking.Tracker.resume(state["run_id"])
        except tracking.TrackingError as e:
            print(f"train: {e}; logging the rest of this run into a new MLflow run", file=sys.stderr)
    if tracker is None:
        tracker = tracking.Tracker.start(tags=tags)
        tracker.log_params(flatten(params))
    tracking.write_run_id(report_dir / "mlflow_run.json", tracker.run_id)
    return tracker


def _config_hash(params: Params, prepared_dir: Path, world: int) -> str:
    """What makes a checkpoint resumable: model + train params, the data, the code, the world size."""
    here = Path(__file__).parent
    blob = json.dumps({
        "model": asdict(params.model), "train": asdict(params.train),
        "data": manifest_hash(prepared_dir), "world_size": world,
        "code": [hashlib.sha256((here / name).read_bytes()).hexdigest() for name in _SOURCES],
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _load_checkpoint(path: Path, config_hash: str, *, announce: bool) -> dict | None:
    """The checkpoint's state if it belongs to this config, else None (and say why)."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a torn or foreign file: never resume from it
        if announce:
            print(f"train: ignoring unreadable checkpoint {path} ({e}); starting fresh", file=sys.stderr)
        return None
    if state.get("config_hash") != config_hash:
        if announce:
            print(f"train: checkpoint {path} is from different params, data or code; starting fresh",
                  file=sys.stderr)
        return None
    if announce:
        print(f"train: resuming from {path} at step {state['step']} (MLflow run {state['run_id']})",
              file=sys.stderr)
    return state


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    """Python, NumPy, torch and CUDA RNG states, in types torch.load(weights_only=True) accepts."""
    kind, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _gather(obj, world: int) -> list:
    """Every rank's `obj`, in rank order (each rank's RNG state goes into rank 0's checkpoint)."""
    if world == 1:
        return [obj]
    out = [None] * world
    dist.all_gather_object(out, obj)
    return out
