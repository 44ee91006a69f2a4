"""Speed and agreement of memprune's VAR against the official FoundationVision/VAR code, same weights.

The official code is not part of memprune: check it out yourself (any folder with ``models/`` and
``dist.py``, e.g. ``git clone https://github.com/FoundationVision/VAR /tmp/var_official``) and pass it with
``--official``. It is imported from that folder, in its own process, and built the way a user would:
``models.build_vae_var(..., flash_if_available=False, fused_if_available=False)``, ``cond_drop_rate = 0``,
eval mode, strict ``load_state_dict``.

Examples:
    # 1. random VAR-d16 + VQVAE state dicts (memprune's init; block gammas rescaled, see --gamma-scale)
    python benchmarks/var_vs_official.py make-weights --depth 16 --out /tmp/var_bench
    # 2. alternate official / ours in fresh processes, 3 rounds, then report medians, ratios, agreement
    python benchmarks/var_vs_official.py compare --official /tmp/var_official --weights /tmp/var_bench \\
        --rounds 3 --batch 2
    # on a shared machine, one thread per process is the least load-sensitive comparison
    python benchmarks/var_vs_official.py compare --official /tmp/var_official --weights /tmp/var_bench \
        --rounds 2 --repeats 2 --threads 1 --workloads forward,encode

Each worker also records its process CPU seconds; CPU/wall shows how many cores it really got (with other
jobs running, one process may get both cores while the next gets one, which skews wall-clock ratios).

Workloads (each timed ``--repeats`` times after one warm-up at batch 1, median reported):
    forward     teacher-forced logits ``[B, L, V]`` from ground-truth tokens (official:
                ``quantize.idxBl_to_var_input`` + ``VAR.forward``; ours: ``VARModel.teacher_forced``);
    prefix      greedy generation after a ``--prefix-scales`` ground-truth prefix at guidance ``--cfg``.
                Upstream has no prefix API: its own ``autoregressive_infer_cfg`` is run with the module-level
                sampler replaced by a hook that returns the prefix tokens for the first scales and the argmax
                afterwards (ours: ``generate(prefix=..., greedy=True)``);
    scratch     the same from scratch: official ``autoregressive_infer_cfg(top_k=1)`` unmodified except for
                the final decode (ours: ``generate(greedy=True)``);
    encode      VQVAE image -> multi-scale indices (``--with-vae``);
    decode      VQVAE f_hat -> image (``--with-vae``). ``autoregressive_infer_cfg`` decodes at the end; in the
                two generation workloads that decode is skipped (the instance's ``fhat_to_img`` returns f_hat)
                so both sides do the same work; it is timed here instead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

_SCHEDULES = {256: (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)}


# ---------------------------------------------------------------------------------------------- inputs
def _inputs(batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Deterministic labels, ground-truth tokens and images shared by both workers."""
    pns = _SCHEDULES[256]
    seq_len = sum(p * p for p in pns)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 4096, (batch, seq_len), generator=gen)
    labels = torch.randint(0, 1000, (batch,), generator=gen)
    images = torch.rand(batch, 3, 256, 256, generator=gen)
    return {"tokens": tokens, "labels": labels, "images": images}


def _split(tokens: torch.Tensor) -> list[torch.Tensor]:
    out, begin = [], 0
    for pn in _SCHEDULES[256]:
        if begin + pn * pn > tokens.shape[1]:
            break
        out.append(tokens[:, begin: begin + pn * pn])
        begin += pn * pn
    return out


def _time(fn: Callable[[], object], repeats: int, cpu: list[float]) -> list[float]:
    """Wall seconds of each call; the process CPU seconds of each call are appended to ``cpu``."""
    times = []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return times


# ---------------------------------------------------------------------------------------------- make-weights
def make_weights(args: argparse.Namespace) -> None:
    from memprune.families.var.model import VARConfig, build_var_model

    model = build_var_model(VARConfig.release(args.depth), seed=args.seed)
    if args.gamma_scale != 1.0:
        # The official init scales the residual gammas by 1e-5, which makes the blocks nearly inert and an
        # agreement check weak; give them trained-like magnitudes (timing is unaffected).
        width = model.var.config.width
        with torch.no_grad():
            for block in model.var.blocks:
                block.ada_lin[-1].weight[: 2 * width].mul_(args.gamma_scale)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.var.state_dict(), out / "var.pth")
    torch.save(model.vae.state_dict(), out / "vae.pth")
    print(f"wrote {out / 'var.pth'} ({len(model.var.state_dict())} tensors) and {out / 'vae.pth'} "
          f"({len(model.vae.state_dict())} tensors)")


# ---------------------------------------------------------------------------------------------- workers
class _Official:
    """The official VAR + VQVAE, driven through its own API."""

    def __init__(self, root: str, weights: Path, depth: int) -> None:
        sys.path.insert(0, root)
        import models  # the official package, from --official
        import models.var as official_var

        self._module = official_var
        self._original_sampler = official_var.sample_with_top_k_top_p_
        vae, var = models.build_vae_var(device="cpu", patch_nums=_SCHEDULES[256], depth=depth,
                                        flash_if_available=False, fused_if_available=False)
        var.load_state_dict(torch.load(weights / "var.pth", map_location="cpu"), strict=True)
        vae.load_state_dict(torch.load(weights / "vae.pth", map_location="cpu"), strict=True)
        var.cond_drop_rate = 0.0
        self.var, self.vae = var.eval(), vae.eval()
        self._decode = vae.fhat_to_img
        self.last_fhat: torch.Tensor | None = None

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.vae.quantize.idxBl_to_var_input(_split(tokens))
            return self.var(labels, x)

    def _skip_decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        self.last_fhat = f_hat.clone()
        return f_hat

    def generate(self, labels: torch.Tensor, prefix: torch.Tensor | None, cfg: float) -> torch.Tensor:
        prefix_maps = _split(prefix) if prefix is not None else []
        chosen: list[torch.Tensor] = []

        def sampler(logits, top_k=0, top_p=0.0, rng=None, num_samples=1):  # same signature as upstream's
            s = len(chosen)
            if prefix is None:
                idx = self._original_sampler(logits, top_k=top_k, top_p=top_p, rng=rng, num_samples=num_samples)
            elif s < len(prefix_maps):
                idx = prefix_maps[s].unsqueeze(-1)
            else:
                idx = logits.argmax(dim=-1, keepdim=True)
            chosen.append(idx[:, :, 0])
            return idx

        self._module.sample_with_top_k_top_p_ = sampler
        self.vae.fhat_to_img = self._skip_decode
        try:
            self.var.autoregressive_infer_cfg(labels.shape[0], labels, cfg=cfg, top_k=1)
        finally:
            self._module.sample_with_top_k_top_p_ = self._original_sampler
            del self.vae.fhat_to_img
        return torch.cat(chosen, dim=1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat(self.vae.img_to_idxBl(images * 2 - 1), dim=1)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._decode(f_hat).add_(1).mul_(0.5)


class _Ours:
    def __init__(self, weights: Path) -> None:
        from memprune.families.var.model import load_var

        self.model = load_var(weights / "var.pth", weights / "vae.pth")
        self.last_fhat: torch.Tensor | None = None

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model.teacher_forced(tokens, labels)

    def generate(self, labels: torch.Tensor, prefix: torch.Tensor | None, cfg: float) -> torch.Tensor:
        tokens, self.last_fhat = self.model.generate_with_fhat(labels, prefix=prefix, cfg=cfg, greedy=True)
        return tokens

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode(images)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.model.decode_fhat(f_hat)


def _workload(name: str, impl: _Official | _Ours, inp: dict[str, torch.Tensor], args: argparse.Namespace,
              outputs: dict[str, torch.Tensor]) -> Callable[[], None]:
    """Warm ``name`` up at batch 1 and return the timed call (which stores its outputs in ``outputs``)."""
    tokens, labels, images = inp["tokens"], inp["labels"], inp["images"]
    if name == "forward":
        impl.forward(tokens[:1], labels[:1])

        def run() -> None:
            outputs["logits"] = impl.forward(tokens, labels)
    elif name in ("prefix", "scratch"):
        pre = tokens[:, : sum(p * p for p in _SCHEDULES[256][: args.prefix_scales])] if name == "prefix" else None
        impl.generate(labels[:1], None if pre is None else pre[:1], args.cfg)

        def run() -> None:
            outputs[name] = impl.generate(labels, pre, args.cfg)
            outputs[f"{name}_fhat"] = impl.last_fhat
    elif name == "encode":
        impl.encode(images[:1])

        def run() -> None:
            outputs["encode"] = impl.encode(images)
    elif name == "decode":
        f_hat = torch.randn(args.batch, 32, 16, 16, generator=torch.Generator().manual_seed(1))
        impl.decode(f_hat[:1])

        def run() -> None:
            outputs["decode"] = impl.decode(f_hat)
    else:
        raise SystemExit(f"unknown workload {name!r}")
    return run


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    weights = Path(args.weights)
    start = time.perf_counter()
    impl = _Official(args.official, weights, args.depth) if args.impl == "official" else _Ours(weights)
    build_s = time.perf_counter() - start
    inp = _inputs(args.batch)
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    outputs: dict[str, torch.Tensor] = {}
    for name in (w for w in args.workloads.split(",") if w):
        run = _workload(name, impl, inp, args, outputs)
        cpu[name] = []
        times[name] = _time(run, args.repeats, cpu[name])
    if args.save_outputs:
        torch.save(outputs, args.save_outputs)
    print(json.dumps({"impl": args.impl, "build_s": round(build_s, 2), "threads": torch.get_num_threads(),
                      "times": {k: [round(t, 3) for t in v] for k, v in times.items()},
                      "cpu_times": {k: [round(t, 3) for t in v] for k, v in cpu.items()}}))


# ---------------------------------------------------------------------------------------------- driver
def _agreement(official: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> dict[str, object]:
    out: dict[str, object] = {}
    if "logits" in official:
        a, b = official["logits"].float(), ours["logits"].float()
        out["logits_max_abs_diff"] = float((a - b).abs().max())
        out["logits_max_abs"] = float(a.abs().max())
        out["logits_argmax_agree"] = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    for name in ("prefix", "scratch", "encode"):
        if name in official:
            a, b = official[name], ours[name]
            out[f"{name}_tokens_identical"] = bool(torch.equal(a.cpu(), b.cpu()))
            out[f"{name}_tokens_agree_frac"] = float((a.cpu() == b.cpu()).float().mean())
    for name in ("prefix_fhat", "scratch_fhat", "decode"):
        if name in official and official[name] is not None and ours.get(name) is not None:
            out[f"{name}_max_abs_diff"] = float((official[name] - ours[name]).abs().max())
    return out


def compare(args: argparse.Namespace) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    out_dir = Path(args.weights)
    results: dict[str, list[dict]] = {"official": [], "ours": []}
    for r in range(args.rounds):
        order = ("official", "ours") if r % 2 == 0 else ("ours", "official")
        for impl in order:
            cmd = [sys.executable, __file__, "worker", "--impl", impl, "--official", args.official,
                   "--weights", args.weights, "--depth", str(args.depth), "--batch", str(args.batch),
                   "--repeats", str(args.repeats), "--prefix-scales", str(args.prefix_scales),
                   "--cfg", str(args.cfg), "--threads", str(args.threads), "--workloads", args.workloads]
            if r == 0:
                cmd += ["--save-outputs", str(out_dir / f"outputs_{impl}_b{args.batch}.pt")]
            load = os.getloadavg()[0]
            proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
                raise SystemExit(f"{impl} worker failed (round {r})")
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["loadavg_1m_before"] = round(load, 2)
            results[impl].append(res)
            print(f"round {r} {impl:8s} load {load:4.2f} {json.dumps(res['times'])}", flush=True)

    summary: dict[str, object] = {"depth": args.depth, "batch": args.batch, "threads": args.threads,
                                  "rounds": args.rounds, "repeats": args.repeats, "cfg": args.cfg,
                                  "prefix_scales": args.prefix_scales, "workloads": {}}
    print(f"\nVAR-d{args.depth}, batch {args.batch}, {args.threads} threads, {args.rounds} rounds x "
          f"{args.repeats} repeats (median over all)")
    print(f"{'workload':10s} {'official s':>11s} {'ours s':>9s} {'ours/official':>14s}   "
          f"{'CPU s: official':>16s} {'ours':>8s} {'ratio':>7s}")
    for name in args.workloads.split(","):
        med = {(impl, key): statistics.median(t for res in results[impl] for t in res[key][name])
               for impl in ("official", "ours") for key in ("times", "cpu_times")}
        t_off, t_ours = med["official", "times"], med["ours", "times"]
        c_off, c_ours = med["official", "cpu_times"], med["ours", "cpu_times"]
        summary["workloads"][name] = {"official_s": round(t_off, 3), "ours_s": round(t_ours, 3),
                                      "ratio_ours_over_official": round(t_ours / t_off, 3),
                                      "official_cpu_s": round(c_off, 3), "ours_cpu_s": round(c_ours, 3),
                                      "cpu_ratio_ours_over_official": round(c_ours / c_off, 3)}
        print(f"{name:10s} {t_off:11.3f} {t_ours:9.3f} {t_ours / t_off:14.3f}   "
              f"{c_off:16.3f} {c_ours:8.3f} {c_ours / c_off:7.3f}")
    official_out = torch.load(out_dir / f"outputs_official_b{args.batch}.pt")
    ours_out = torch.load(out_dir / f"outputs_ours_b{args.batch}.pt")
    summary["agreement"] = _agreement(official_out, ours_out)
    summary["runs"] = results
    print("agreement:", json.dumps(summary["agreement"]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-weights", help="write random var.pth / vae.pth")
    mk.add_argument("--depth", type=int, default=16)
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--gamma-scale", type=float, default=1e4,
                    help="multiply the blocks' AdaLN gamma rows (official init: x1e-5) by this")
    mk.add_argument("--out", required=True)
    for name in ("compare", "worker"):
        p = sub.add_parser(name)
        p.add_argument("--official", required=True, help="folder of an official VAR checkout (models/, dist.py)")
        p.add_argument("--weights", required=True, help="folder with var.pth and vae.pth (make-weights)")
        p.add_argument("--depth", type=int, default=16)
        p.add_argument("--batch", type=int, default=2)
        p.add_argument("--repeats", type=int, default=1)
        p.add_argument("--prefix-scales", type=int, default=4)
        p.add_argument("--cfg", type=float, default=1.5)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--workloads", default="forward,prefix,scratch")
        if name == "compare":
            p.add_argument("--rounds", type=int, default=3)
            p.add_argument("--json-out")
        else:
            p.add_argument("--impl", choices=["official", "ours"], required=True)
            p.add_argument("--save-outputs")
    args = parser.parse_args()
    {"make-weights": make_weights, "compare": compare, "worker": worker}[args.cmd](args)


if __name__ == "__main__":
    main()
