"""The multi-condition extraction audit in memory: references once, then any model under any conditions.

:class:`ReferenceSet` tokenizes every candidate once and embeds its tokenizer reconstruction (the attack's
reference) and its canonical view with SSCD once. :func:`audit_conditions` completes every candidate from its
ground-truth prefix under each :class:`~memprune.evaluators.conditions.AttackCondition`, embeds the generations
and compares them with the references. The same references serve every model that shares the tokenizer (the
original, a patched checkpoint, a model whose rows are scaled in place between calls), so comparisons across
models and rounds are on identical references and cost no second tokenizer pass.

An image counts as extracted if *any* condition gives an SSCD cosine above the threshold (strict ``>``).
Nothing is written to disk here; :mod:`memprune.evaluators.audit` adds the resumable results log.

Sampled conditions seed one ``torch.Generator`` per batch: the batch whose first candidate has (global) index
``i`` samples with ``seed + 1_000_003 * i`` (the first batch with ``seed`` itself). Results are therefore
reproducible for a given batch size, which the reports record.

Within a batch, conditions that share a prefix and a batch layout (unguided, or guided with any weight) share
its prefix pass: the family's ``prefill`` runs the forced tokens once (filling the KV cache and the raw logits
of the first free position, before any guidance mix) and every condition continues from a copy
(``generate_from``), bit-identical to a ``generate`` per condition.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from memprune.data import check_labels
from memprune.errors import MempruneError
from memprune.evaluators.audit_candidates import Candidate, check_unique, load_views
from memprune.evaluators.audit_report import cosine_distribution
from memprune.evaluators.conditions import AttackCondition, prefix_tokens
from memprune.evaluators.sscd import COPY_THRESHOLD, SSCDBackend, SSCDEmbeddings
from memprune.families.base import IARModel, PrefixState

SEED_STRIDE = 1_000_003
"""Sampled batch starting at candidate ``i`` uses ``seed + SEED_STRIDE * i``."""
_FACTS = ("arch", "seq_len", "vocab_size", "num_classes", "image_size")

Progress = Callable[[str, int, int], None]


@dataclass
class ReferenceSet:
    """Ground truth of a candidate set, computed once per run and reused across conditions, models and rounds.

    Attributes:
        candidates: the audited images, in order.
        tokens: ground-truth tokens ``[N, L]`` (int64, CPU) of the canonical views.
        labels: class ids ``[N]`` (int64, CPU).
        reference: SSCD embeddings of the tokenizer reconstructions ``decode(encode(view))`` (the attack's reference).
        view: SSCD embeddings of the canonical views (the stricter comparison with the training image).
        reconstruction_similarity: cosine of view and reconstruction ``[N]`` (tokenizer fidelity).
        facts: family facts of the model that tokenized (arch, seq_len, ...); a model audited later must match.
        indices: global position of each candidate (seeds of sampled batches derive from it).
        views, reconstructions: the pixels ``[N, 3, S, S]`` (CPU), kept only with ``keep_images``.
    """

    candidates: list[Candidate]
    tokens: torch.Tensor
    labels: torch.Tensor
    reference: SSCDEmbeddings
    view: SSCDEmbeddings
    reconstruction_similarity: torch.Tensor
    facts: dict[str, object]
    indices: list[int] = field(default_factory=list)
    views: torch.Tensor | None = None
    reconstructions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.indices:
            self.indices = list(range(len(self.candidates)))

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.candidates]

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: IARModel,
        candidates: Sequence[Candidate],
        sscd: SSCDBackend,
        *,
        batch_size: int = 16,
        keep_images: bool = False,
        start_index: int = 0,
        progress: Progress | None = None,
    ) -> ReferenceSet:
        """Tokenize, reconstruct and embed every candidate once with ``model``'s tokenizer.

        Args:
            model: any model with the tokenizer (its transformer is not used).
            candidates: the images; ids must be unique.
            sscd: the copy-detection backend every later comparison uses.
            batch_size: images per tokenizer / SSCD batch.
            keep_images: keep views and reconstructions in memory (for image grids).
            start_index: global index of the first candidate (a slice of a longer list).
            progress: called as ``progress("reference", done, total)``.
        """
        if not candidates:
            raise MempruneError("no candidates to audit: check --data / --candidates (the candidate set is empty)")
        if batch_size < 1:
            raise MempruneError(f"--batch-size {batch_size} must be at least 1")
        check_unique(candidates)
        _check_labels(candidates, model)
        tokens, refs, views_e, views_kept, recons_kept = [], [], [], [], []
        for start in range(0, len(candidates), batch_size):
            chunk = list(candidates[start : start + batch_size])
            views = load_views(chunk, model).to(model.device)
            toks = model.encode(views)
            recons = model.decode(toks).float().clamp(0, 1).cpu()
            # One SSCD call for views and reconstructions together (the batching the single-condition audit used).
            emb = sscd.embed(torch.cat([views.cpu(), recons]), batch_size=len(chunk) * 2)
            views_e.append(emb[: len(chunk)])
            refs.append(emb[len(chunk) :])
            tokens.append(toks.cpu())
            if keep_images:
                views_kept.append(views.cpu())
                recons_kept.append(recons)
            if progress:
                progress("reference", start + len(chunk), len(candidates))
        view, reference = SSCDEmbeddings.concat(views_e), SSCDEmbeddings.concat(refs)
        return cls(
            list(candidates), torch.cat(tokens), torch.tensor([c.label for c in candidates], dtype=torch.long),
            reference, view, view.cosine(reference), model_facts(model),
            list(range(start_index, start_index + len(candidates))),
            torch.cat(views_kept) if keep_images else None, torch.cat(recons_kept) if keep_images else None,
        )  # fmt: skip

    def subset(self, rows: Sequence[int]) -> ReferenceSet:
        """The references of ``rows`` (positions in this set), sharing nothing mutable."""
        idx = torch.tensor(list(rows), dtype=torch.long)
        pick = (lambda t: t[idx]) if len(idx) else (lambda t: t[:0])
        return ReferenceSet(
            [self.candidates[i] for i in rows], pick(self.tokens), pick(self.labels), self.reference[idx],
            self.view[idx], pick(self.reconstruction_similarity), dict(self.facts), [self.indices[i] for i in rows],
            None if self.views is None else pick(self.views),
            None if self.reconstructions is None else pick(self.reconstructions),
        )  # fmt: skip

    def check_model(self, model: IARModel) -> None:
        """``model`` must share the family of the model that tokenized (same sequence, vocabulary, classes...)."""
        facts = model_facts(model)
        for key in _FACTS:
            if facts[key] != self.facts[key]:
                raise MempruneError(
                    f"the audited model differs from the reference model in {key} ({facts[key]} vs {self.facts[key]}): "
                    "audit models that share the tokenizer (a patched checkpoint and its original)"
                )


def model_facts(model: IARModel) -> dict[str, object]:
    """The facts two models must share to be audited on the same references."""
    return {key: getattr(model, key) for key in _FACTS}


def _check_labels(candidates: Sequence[Candidate], model: IARModel) -> None:
    check_labels(candidates, model.num_classes)  # type: ignore[arg-type]


@dataclass
class ConditionAudit:
    """Every candidate under every condition for one model.

    Attributes:
        conditions: the conditions, in the documented order (column order below).
        ids: candidate ids (row order below).
        threshold: SSCD cosine above which a generation counts as an extraction (strict ``>``).
        similarity: cosine of generation and tokenizer reconstruction ``[N, C]`` (the attack's measure).
        similarity_image: cosine of generation and training image view ``[N, C]`` (stricter).
        token_match: share of generated (non-prefix) tokens equal to the ground truth ``[N, C]``; NaN when the
            prefix is the whole sequence.
        best_images: per candidate, the generation with the highest ``similarity`` ``[N, 3, S, S]`` (CPU), kept
            only with ``keep_images``.
    """

    conditions: list[AttackCondition]
    ids: list[str]
    threshold: float
    similarity: torch.Tensor
    similarity_image: torch.Tensor
    token_match: torch.Tensor
    best_images: torch.Tensor | None = None

    @property
    def extracted_matrix(self) -> torch.Tensor:
        """``[N, C]`` bool: extracted by that condition."""
        return self.similarity > self.threshold

    @property
    def extracted(self) -> torch.Tensor:
        """``[N]`` bool: extracted by at least one condition (the union)."""
        return self.extracted_matrix.any(dim=1)

    @property
    def union_count(self) -> int:
        """Images extracted under any condition (the headline)."""
        return int(self.extracted.sum())

    @property
    def per_condition_counts(self) -> dict[str, int]:
        """Condition key -> images it extracts, in condition order."""
        counts = self.extracted_matrix.sum(dim=0).tolist()
        return {c.key: int(n) for c, n in zip(self.conditions, counts)}

    @property
    def first_condition(self) -> list[str | None]:
        """Per candidate the key of the first condition (documented order) that extracts it, else ``None``."""
        hit = self.extracted_matrix
        first = hit.float().argmax(dim=1).tolist()  # argmax returns the first maximal column
        return [self.conditions[k].key if row else None for k, row in zip(first, hit.any(dim=1).tolist())]

    @property
    def best_similarity(self) -> torch.Tensor:
        """``[N]``: the highest cosine over the conditions (what the union thresholds)."""
        return self.similarity.max(dim=1).values

    def count(self, ids: Sequence[str] | set[str]) -> int:
        """Union count restricted to the candidates whose id is in ``ids`` (e.g. one half of a forget set)."""
        wanted = set(ids)
        return sum(bool(e) for i, e in zip(self.ids, self.extracted.tolist()) if i in wanted)

    def to_summary(self) -> dict:
        """Aggregate figures only (no image ids): union, per condition, first-condition tally, cosine spread."""
        firsts = self.first_condition
        best = self.best_similarity.tolist()
        return {
            "candidates": len(self.ids),
            "extracted": self.union_count,
            "threshold": self.threshold,
            "conditions": [c.to_json() for c in self.conditions],
            "per_condition": self.per_condition_counts,
            "first_condition_counts": {c.key: sum(f == c.key for f in firsts) for c in self.conditions},
            "extracted_vs_training_image": int((self.similarity_image > self.threshold).any(dim=1).sum()),
            "similarity": cosine_distribution(best),
        }


@torch.no_grad()
def audit_conditions(
    model: IARModel,
    refs: ReferenceSet,
    conditions: Sequence[AttackCondition],
    sscd: SSCDBackend,
    *,
    threshold: float = COPY_THRESHOLD,
    batch_size: int = 16,
    keep_images: bool = False,
    progress: Progress | None = None,
    share_prefix: bool = True,
) -> ConditionAudit:
    """Complete every reference candidate under every condition with ``model`` and compare with SSCD.

    Pure in memory and deterministic for given conditions and batch size; reads the model's weights at call
    time, so it may be called again after the weights were changed in place.

    Args:
        model: the generator; must share the family of the model that built ``refs``.
        refs: :meth:`ReferenceSet.build` output (embedded with the same ``sscd``).
        conditions: what to run (:func:`memprune.evaluators.conditions.default_conditions`); their order is
            the one ``first_condition`` uses.
        sscd: the backend that embedded ``refs``.
        threshold: SSCD cosine above which an image counts as extracted (strict).
        batch_size: candidates per generation batch.
        keep_images: keep each candidate's best generation (for grids).
        progress: called as ``progress("audit", done, total)`` after each batch (all its conditions).
        share_prefix: run the ground-truth prefix pass (and fill its KV cache) once per batch, prefix and batch
            layout (unguided, or guided with any weight: ``model.prefill_group``), and continue every condition of
            that prefix (greedy, each seed, each guidance weight of the layout) from it. ``False`` reruns
            it inside each condition's ``generate`` (the reference path; the results are bit-identical).
    """
    if not conditions:
        raise MempruneError("no attack condition to run: give at least one (default_conditions)")
    if batch_size < 1:
        raise MempruneError(f"--batch-size {batch_size} must be at least 1")
    if not (math.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise MempruneError(f"threshold {threshold} is not a usable cosine threshold: give a value in (0, 1)")
    refs.check_model(model)
    n_tok = [prefix_tokens(model, c.prefix) for c in conditions]  # validates every prefix before any work
    n, c_count = len(refs), len(conditions)
    groups = [(nk, model.prefill_group(c.cfg)) for c, nk in zip(conditions, n_tok)]  # what one prefill serves
    last_use = {key: k for k, key in enumerate(groups)}  # a state is freed after its last condition
    sim = torch.empty(n, c_count)
    sim_img = torch.empty(n, c_count)
    match = torch.full((n, c_count), float("nan"))
    best = None
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        tokens = refs.tokens[start:stop].to(model.device)
        labels = refs.labels[start:stop].to(model.device)
        ref, view = refs.reference[start:stop], refs.view[start:stop]
        batch_best: torch.Tensor | None = None
        states: dict[tuple[int, object], PrefixState | None] = {}
        for k, (cond, nk) in enumerate(zip(conditions, n_tok)):
            state = None
            if share_prefix:  # one prefix pass per prefix and batch layout, continued by each of its conditions
                key = groups[k]
                if key not in states:
                    states[key] = prefill(model, tokens, labels, nk, cond)
                state = states.pop(key) if last_use[key] == k else states[key]
            gen_tokens = complete(model, tokens, labels, nk, cond, refs.indices[start], state)
            gen = model.decode(gen_tokens).float().clamp(0, 1).cpu()
            emb = sscd.embed(gen, batch_size=stop - start)
            sim[start:stop, k], sim_img[start:stop, k] = emb.cosine(ref), emb.cosine(view)
            if nk < tokens.shape[1]:  # only generated positions count (the forced prefix would inflate it)
                match[start:stop, k] = (gen_tokens[:, nk:].cpu() == tokens[:, nk:].cpu()).float().mean(dim=1)
            if keep_images:  # keep, per candidate, the generation of its highest cosine so far
                if batch_best is None:
                    batch_best = gen.clone()
                else:
                    better = sim[start:stop, k] > sim[start:stop, :k].max(dim=1).values
                    batch_best = torch.where(better[:, None, None, None], gen, batch_best)
        if keep_images and batch_best is not None:
            best = batch_best if best is None else torch.cat([best, batch_best])
        if progress:
            progress("audit", stop, n)
    return ConditionAudit(list(conditions), refs.ids, threshold, sim, sim_img, match, best)


def prefill(
    model: IARModel, tokens: torch.Tensor, labels: torch.Tensor, n: int, cond: AttackCondition
) -> PrefixState | None:
    """The prefix pass of the first ``n`` ground-truth tokens under ``cond``'s guidance (``None``: nothing to generate)."""
    if n >= model.seq_len:
        return None
    return model.prefill(labels, tokens[:, :n], cfg=cond.cfg)


def complete(
    model: IARModel, tokens: torch.Tensor, labels: torch.Tensor, n: int, cond: AttackCondition, first_index: int = 0,
    state: PrefixState | None = None,
) -> torch.Tensor:
    """Generate from the first ``n`` ground-truth tokens under ``cond`` (the batch starts at ``first_index``).

    With ``state`` (:func:`prefill` of the same tokens and ``n``, under a guidance of the same
    ``model.prefill_group``) the prefix pass is not run again.
    """
    if n >= model.seq_len:
        return tokens.clone()  # the whole sequence is forced: nothing left to generate
    seed = None if cond.greedy else int(cond.seed) + SEED_STRIDE * first_index  # type: ignore[arg-type]
    if state is not None:
        return model.generate_from(state, cfg=cond.cfg, top_k=cond.top_k, top_p=cond.top_p,
                                   temperature=cond.temperature, greedy=cond.greedy, seed=seed)  # fmt: skip
    return model.generate(
        labels, prefix=tokens[:, :n], cfg=cond.cfg, top_k=cond.top_k, top_p=cond.top_p,
        temperature=cond.temperature, greedy=cond.greedy, seed=seed,
    )  # fmt: skip
