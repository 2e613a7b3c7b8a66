"""Quality-gate thresholds per task (configs/gates.yaml) and the verdict on a candidate's metrics."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from slmops.configfile import config_path, load_model


class DecoderGate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_ppl_ratio: float = Field(gt=1.0, description="Candidate PPL / reference PPL must not exceed this.")
    min_top1_agreement: float = Field(ge=0.0, le=1.0, description="Teacher-forced argmax agreement with the reference.")


class EmbeddingGate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cosine_mean: float = Field(ge=-1.0, le=1.0)
    min_cosine_min: float = Field(ge=-1.0, le=1.0)
    min_topk_agreement: float = Field(ge=0.0, le=1.0)
    top_k: int = Field(default=3, ge=1)


class RerankGate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_spearman: float = Field(ge=-1.0, le=1.0)


class FillMaskGate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_top1_agreement: float = Field(ge=0.0, le=1.0, description="Same most likely token at each mask as the reference.")
    min_top5_overlap: float = Field(ge=0.0, le=1.0, description="Mean share of the reference's top 5 tokens kept.")


class Gates(BaseModel):
    """Thresholds for each task; a task without a gate cannot produce eligible candidates."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    causal_lm: DecoderGate = Field(alias="causal-lm")
    sentence_embedding: EmbeddingGate = Field(alias="sentence-embedding")
    cross_encoder: RerankGate | None = Field(default=None, alias="cross-encoder")
    fill_mask: FillMaskGate | None = Field(default=None, alias="fill-mask")

    def check(self, task: str, metrics: dict[str, float]) -> list[str]:
        """Reasons the metrics fail the task's gate (empty list: passed)."""
        reasons: list[str] = []
        if task == "causal-lm":
            g = self.causal_lm
            if metrics["ppl_ratio"] > g.max_ppl_ratio:
                reasons.append(f"ppl_ratio {metrics['ppl_ratio']:.4f} > {g.max_ppl_ratio}")
            if metrics["top1_agreement"] < g.min_top1_agreement:
                reasons.append(f"top1_agreement {metrics['top1_agreement']:.4f} < {g.min_top1_agreement}")
        elif task == "sentence-embedding":
            e = self.sentence_embedding
            if metrics["cosine_mean"] < e.min_cosine_mean:
                reasons.append(f"cosine_mean {metrics['cosine_mean']:.4f} < {e.min_cosine_mean}")
            if metrics["cosine_min"] < e.min_cosine_min:
                reasons.append(f"cosine_min {metrics['cosine_min']:.4f} < {e.min_cosine_min}")
            if metrics["topk_agreement"] < e.min_topk_agreement:
                reasons.append(f"topk_agreement {metrics['topk_agreement']:.4f} < {e.min_topk_agreement}")
        elif task == "cross-encoder" and self.cross_encoder is not None:
            if metrics["spearman"] < self.cross_encoder.min_spearman:
                reasons.append(f"spearman {metrics['spearman']:.4f} < {self.cross_encoder.min_spearman}")
        elif task == "fill-mask" and self.fill_mask is not None:
            f = self.fill_mask
            if metrics["top1_agreement"] < f.min_top1_agreement:
                reasons.append(f"top1_agreement {metrics['top1_agreement']:.4f} < {f.min_top1_agreement}")
            if metrics["top5_overlap"] < f.min_top5_overlap:
                reasons.append(f"top5_overlap {metrics['top5_overlap']:.4f} < {f.min_top5_overlap}")
        else:
            reasons.append(f"no quality gate is configured for task {task!r}")
        return reasons


def load_gates(path: Path | None = None) -> Gates:
    """Parse ``<config_dir>/gates.yaml``; raises ConfigError naming the task and field."""
    return load_model(path or config_path("gates.yaml"), Gates, what="gates")
