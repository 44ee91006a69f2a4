"""Speed and agreement of memprune's LlamaGen against the official FoundationVision/LlamaGen code, same weights.

The official code is not part of memprune: check it out yourself (a folder with ``autoregressive/`` and ``utils/``,
e.g. ``git clone https://github.com/FoundationVision/LlamaGen /tmp/llamagen_official``) and pass it with
``--official``. It is imported from that folder, in its own process, and built the way its samplers do:
``GPT_models['GPT-B'](vocab_size=16384, block_size=256, num_classes=1000, cls_token_num=1, model_type='c2i')``,
strict ``load_state_dict``, eval mode, float32.

Examples:
    # 1. a random LlamaGen-B state dict (memprune's seeded init: the official one zeroes ``output``)
    python benchmarks/llamagen_vs_official.py make-weights --out /tmp/llamagen_bench
    # 2. alternate official / ours in fresh processes, then report medians, ratios and agreement
    python benchmarks/llamagen_vs_official.py compare --official /tmp/llamagen_official \\
        --weights /tmp/llamagen_bench --rounds 2 --batch 2 --threads 1

Workloads (each timed ``--repeats`` times after one warm-up at batch 1, median reported):
    forward  teacher-forced logits [B, 256, V] (official: ``model(z[:, :-1], labels, input_pos=arange(256))``;
             ours: ``LlamaGenModel.teacher_forced``);
    prefix   greedy generation after a ``--prefix`` token ground-truth prefix at guidance ``--cfg`` (official:
             ``setup_caches``, ``prefill`` of the class, the prefix in one chunk, ``decode_n_tokens`` with
             ``sample_logits=False``, caches cleared afterwards; ours: ``generate(prefix=..., greedy=True)``);
    scratch  the same from scratch (official: ``generate(..., sample_logits=False)`` unmodified).
Each worker records its process CPU seconds beside the wall time (CPU/wall shows how many cores it really got).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SEQ, VOCAB = 256, 16384


def _inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, SEQ), generator=gen), torch.randint(0, 1000, (batch,), generator=gen)


def make_weights(args: argparse.Namespace) -> None:
    from memprune.families.llamagen.transformer import LLAMAGEN_CONFIGS, LlamaGenTransformer, init_random_

    model = init_random_(LlamaGenTransformer(LLAMAGEN_CONFIGS["GPT-B"]), torch.Generator().manual_seed(args.seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, out / "c2i_B_256.pt")
    from memprune.families.llamagen.vq import LlamaGenVQ, VQConfig

    # A small VQ (only its codebook size matters to the generator workloads; the tokenizer is not timed).
    vq = LlamaGenVQ(VQConfig(ch=32, num_res_blocks=1, z_channels=32, codebook_size=VOCAB))
    torch.save({"model": vq.state_dict()}, out / "vq.pt")
    print(f"wrote {out / 'c2i_B_256.pt'} ({len(model.state_dict())} tensors) and {out / 'vq.pt'}")


class _Official:
    def __init__(self, root: str, weights: Path) -> None:
        sys.path.insert(0, root)
        from autoregressive.models import generate as gen  # the official modules, from --official
        from autoregressive.models.gpt import GPT_models

        self.gen = gen
        model = GPT_models["GPT-B"](vocab_size=VOCAB, block_size=SEQ, num_classes=1000, cls_token_num=1, model_type="c2i")
        model.load_state_dict(torch.load(weights / "c2i_B_256.pt", map_location="cpu")["model"], strict=True)
        self.model = model.eval()

    def _clear(self) -> None:
        for layer in self.model.layers:
            layer.attention.kv_cache = None

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(tokens[:, :-1], labels, input_pos=torch.arange(SEQ))[0]

    @torch.no_grad()
    def generate(self, labels: torch.Tensor, prefix: torch.Tensor | None, cfg: float) -> torch.Tensor:
        m, g = self.model, self.gen
        try:
            if prefix is None:
                return g.generate(m, labels, SEQ, cfg_scale=cfg, cfg_interval=-1, temperature=1.0, top_k=0,
                                  top_p=1.0, sample_logits=False)  # fmt: skip
            b, n = labels.shape[0], prefix.shape[1]
            guided = cfg > 1.0
            cond = torch.cat([labels, torch.full_like(labels, m.num_classes)]) if guided else labels
            m.setup_caches(max_batch_size=2 * b if guided else b, max_seq_length=SEQ + 1, dtype=torch.float32)
            g.prefill(m, cond, torch.arange(1), cfg, temperature=1.0, top_k=0, top_p=1.0, sample_logits=False)
            chunk = torch.cat([prefix, prefix]) if guided else prefix
            logits = m(chunk, None, input_pos=torch.arange(1, n + 1))[0][:, -1:]
            if guided:
                c, u = logits.split(b)
                logits = u + (c - u) * cfg
            first = g.sample(logits, temperature=1.0, top_k=0, top_p=1.0, sample_logits=False)[0]
            rest, _ = g.decode_n_tokens(m, first, torch.tensor([n + 1]), SEQ - n - 1, cfg, -1, temperature=1.0,
                                        top_k=0, top_p=1.0, sample_logits=False)  # fmt: skip
            return torch.cat([prefix, first, *rest], dim=1)
        finally:
            self._clear()  # the official caches would otherwise stay in the model (and its state_dict)


class _Ours:
    def __init__(self, weights: Path) -> None:
        from memprune.families.llamagen.model import load_llamagen

        self.model = load_llamagen(weights / "c2i_B_256.pt", weights / "vq.pt")

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model.teacher_forced(tokens, labels)

    def generate(self, labels: torch.Tensor, prefix: torch.Tensor | None, cfg: float) -> torch.Tensor:
        return self.model.generate(labels, prefix=prefix, cfg=cfg, greedy=True)


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    impl = _Official(args.official, Path(args.weights)) if args.impl == "official" else _Ours(Path(args.weights))
    build_s = time.perf_counter() - start
    tokens, labels = _inputs(args.batch)
    times: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    outputs: dict[str, torch.Tensor] = {}
    for name in (w for w in args.workloads.split(",") if w):
        if name == "forward":
            impl.forward(tokens[:1], labels[:1])
            run = lambda: outputs.__setitem__("logits", impl.forward(tokens, labels))  # noqa: E731
        elif name in ("prefix", "scratch"):
            pre = tokens[:, : args.prefix] if name == "prefix" else None
            impl.generate(labels[:1], None if pre is None else pre[:1], args.cfg)
            run = lambda name=name, pre=pre: outputs.__setitem__(name, impl.generate(labels, pre, args.cfg))  # noqa: E731
        else:
            raise SystemExit(f"unknown workload {name!r}")
        times[name], cpu[name] = [], []
        for _ in range(args.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            times[name].append(round(time.perf_counter() - t0, 3))
            cpu[name].append(round(time.process_time() - c0, 3))
    if args.save_outputs:
        torch.save(outputs, args.save_outputs)
    print(json.dumps({"impl": args.impl, "build_s": round(build_s, 2), "threads": torch.get_num_threads(),
                      "times": times, "cpu_times": cpu}))  # fmt: skip


def _agreement(official: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> dict[str, object]:
    out: dict[str, object] = {}
    if "logits" in official:
        a, b = official["logits"].float(), ours["logits"].float()
        out["logits_max_abs_diff"] = float((a - b).abs().max())
        out["logits_max_abs"] = float(a.abs().max())
        out["logits_argmax_agree"] = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    for name in ("prefix", "scratch"):
        if name in official:
            a, b = official[name].long(), ours[name].long()
            out[f"{name}_tokens_identical"] = bool(torch.equal(a, b))
            out[f"{name}_tokens_agree_frac"] = float((a == b).float().mean())
    return out


def compare(args: argparse.Namespace) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    out_dir = Path(args.weights)
    results: dict[str, list[dict]] = {"official": [], "ours": []}
    for r in range(args.rounds):
        for impl in ("official", "ours") if r % 2 == 0 else ("ours", "official"):
            cmd = [sys.executable, __file__, "worker", "--impl", impl, "--official", args.official,
                   "--weights", args.weights, "--batch", str(args.batch), "--repeats", str(args.repeats),
                   "--prefix", str(args.prefix), "--cfg", str(args.cfg), "--threads", str(args.threads),
                   "--workloads", args.workloads]  # fmt: skip
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
    summary: dict[str, object] = {"model": "LlamaGen-B (random)", "batch": args.batch, "threads": args.threads,
                                  "rounds": args.rounds, "repeats": args.repeats, "cfg": args.cfg,
                                  "prefix": args.prefix, "workloads": {}}  # fmt: skip
    print(f"\nLlamaGen-B, batch {args.batch}, {args.threads} threads, {args.rounds} rounds x {args.repeats} repeats")
    print(f"{'workload':9s} {'official s':>11s} {'ours s':>9s} {'ours/official':>14s} {'CPU ratio':>10s}")
    for name in args.workloads.split(","):
        med = {(i, k): statistics.median(t for res in results[i] for t in res[k][name])
               for i in ("official", "ours") for k in ("times", "cpu_times")}  # fmt: skip
        t_off, t_ours = med["official", "times"], med["ours", "times"]
        c_ratio = med["ours", "cpu_times"] / med["official", "cpu_times"]
        summary["workloads"][name] = {"official_s": t_off, "ours_s": t_ours, "ratio": round(t_ours / t_off, 3),
                                      "cpu_ratio": round(c_ratio, 3)}  # fmt: skip
        print(f"{name:9s} {t_off:11.3f} {t_ours:9.3f} {t_ours / t_off:14.3f} {c_ratio:10.3f}")
    summary["agreement"] = _agreement(torch.load(out_dir / f"outputs_official_b{args.batch}.pt"),
                                      torch.load(out_dir / f"outputs_ours_b{args.batch}.pt"))  # fmt: skip
    summary["runs"] = results
    print("agreement:", json.dumps(summary["agreement"]))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make-weights", help="write a random LlamaGen-B c2i_B_256.pt and a small vq.pt")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--out", required=True)
    for name in ("compare", "worker"):
        p = sub.add_parser(name)
        p.add_argument("--official", required=True, help="folder of an official LlamaGen checkout (autoregressive/)")
        p.add_argument("--weights", required=True, help="folder written by make-weights")
        p.add_argument("--batch", type=int, default=2)
        p.add_argument("--repeats", type=int, default=1)
        p.add_argument("--prefix", type=int, default=30)
        p.add_argument("--cfg", type=float, default=2.0)
        p.add_argument("--threads", type=int, default=1)
        p.add_argument("--workloads", default="forward,prefix,scratch")
        if name == "compare":
            p.add_argument("--rounds", type=int, default=2)
            p.add_argument("--json-out")
        else:
            p.add_argument("--impl", choices=["official", "ours"], required=True)
            p.add_argument("--save-outputs")
    args = parser.parse_args()
    {"make-weights": make_weights, "compare": compare, "worker": worker}[args.cmd](args)


if __name__ == "__main__":
    main()
