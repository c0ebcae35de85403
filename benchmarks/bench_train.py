"""Fusion training throughput fed by the archive loader vs by in-memory tensors, in one run.

Goal: the loader is never the bottleneck (ratio ≥ 0.95). Both feeds run the same Lightning
training step (RS-SPADE by default) for the same number of batches of the same shape; the first
batches are a warm-up and are not timed. Also prints peak memory (process RSS, and CUDA allocations
when a GPU is used). On a GPU machine the same script uses it (``--accelerator auto``).

Usage: python benchmarks/bench_train.py [--archive DIR] [--model rs-spade] [--size tiny] [--batch-size 4]
                                        [--crop 128] [--steps 30] [--workers 0]
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from rsgee.train.data import FusionData, collate
from rsgee.configs import FusionConfig, MODELS
from rsgee.train.fusion import FusionTask


class Timer(L.Callback):
    """Wall time from the end of the warm-up batches to the end of training."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.batches = warmup, None, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if batch_idx + 1 == self.warmup:
            self.start = time.perf_counter()
        elif batch_idx + 1 > self.warmup:
            self.batches += 1
        self.images = len(batch["target"])

    @property
    def images_per_second(self) -> float:
        return self.batches * self.images / (time.perf_counter() - self.start)


class InMemory(Dataset):
    """The same samples, already decoded and normalised, as tensors in memory."""

    def __init__(self, samples: list[dict], length: int):
        self.samples, self.length = samples, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        return self.samples[i % len(self.samples)]


def make_archive(work: Path) -> Path:
    from rsgee.acquire.aoi import parse_aois
    from rsgee.acquire.export import export_aois
    from rsgee.acquire.synthetic import SyntheticSource
    from rsgee.catalog import load_catalog
    from rsgee.preprocess.split import SplitConfig
    from rsgee.preprocess.tiling import build_archive

    source = SyntheticSource(seed=0, start=dt.date(2023, 6, 1), end=dt.date(2023, 9, 1))
    export_aois(parse_aois(["bench=1.65,48.33,1.77,48.41"]), work / "exports", source, load_catalog(), progress=False)
    build_archive([work / "exports"], work / "archive", load_catalog(), split=SplitConfig(block=1), progress=False)
    return work / "archive"


def fit(task: FusionTask, loader: DataLoader, steps: int, warmup: int, accelerator: str) -> float:
    timer = Timer(warmup)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=steps + warmup, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[timer], accelerator=accelerator, devices=1, num_sanity_val_steps=0)
    trainer.fit(task, train_dataloaders=loader)
    return timer.images_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=None, help="an existing archive (default: build one)")
    parser.add_argument("--model", default="rs-spade", choices=MODELS)
    parser.add_argument("--size", default="tiny", choices=["tiny", "small", "paper"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="timed batches per feed")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the archive feed")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()
    cuda = torch.cuda.is_available() and args.accelerator in ("auto", "gpu")
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"machine: {platform.machine()}, {device}, torch {torch.__version__}, lightning {L.__version__}")
    work = Path(tempfile.mkdtemp(prefix="rsgee-bench-train-"))
    archive = args.archive or make_archive(work)
    config = FusionConfig(model=args.model, size=args.size, batch_size=args.batch_size, crop=args.crop)
    data = FusionData(archive, config.sources, batch_size=args.batch_size, num_workers=args.workers, crop=args.crop,
                      progress=False)
    data.prepare_data()
    data.setup()
    n = args.steps + args.warmup
    train = data.splits["train"]
    sampler = torch.utils.data.RandomSampler(train, replacement=True, num_samples=n * args.batch_size)
    archive_loader = DataLoader(train, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                collate_fn=collate)
    memory = InMemory([train[i] for i in range(min(len(train), 16))], n * args.batch_size)
    memory_loader = DataLoader(memory, batch_size=args.batch_size, collate_fn=collate)
    rates = {}
    for name, loader in (("in-memory tensors", memory_loader), ("archive loader (packed cache)", archive_loader)):
        torch.manual_seed(0)
        task = FusionTask(config.__dict__, data.norm)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        rates[name] = fit(task, loader, args.steps, args.warmup, args.accelerator)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{args.model} {args.size}, batch {args.batch_size}, {args.crop}² crops, {args.steps} timed steps per feed, "
          f"{args.workers} loader workers")
    print("\n| feed | images/s |\n|---|---|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.2f} |")
    ratio = rates["archive loader (packed cache)"] / rates["in-memory tensors"]
    print(f"\narchive / in-memory: {ratio:.3f} (goal ≥ 0.95)")
    print(f"peak process RSS {peak_rss:.0f} MiB" + (f", peak CUDA allocated {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
                                                    if cuda else ""))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
