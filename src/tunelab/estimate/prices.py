"""The dated table of GPUs (bf16 TFLOPs, memory, $/hour), hosted fine-tuning and hosted inference prices (``resources/prices.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml

from tunelab.errors import ConfigError


@dataclass(frozen=True)
class GPUSpec:
    name: str
    bf16_tflops: float
    memory_gib: float
    usd_per_hour: float
    source: str = ""


@dataclass(frozen=True)
class CloudPrice:
    provider: str
    model: str
    usd_per_million_training_tokens: float
    published: str = ""


@dataclass(frozen=True)
class InferencePrice:
    """A hosted model's price per token (input and output priced apart, as providers do)."""

    provider: str
    model: str
    usd_per_million_input_tokens: float
    usd_per_million_output_tokens: float
    published: str = ""

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.usd_per_million_input_tokens + output_tokens * self.usd_per_million_output_tokens) / 1e6


@dataclass(frozen=True)
class PriceTable:
    table_date: str
    gpus: list[GPUSpec]
    cloud_fine_tuning: list[CloudPrice]
    inference: list[InferencePrice] = field(default_factory=list)

    def inference_price(self, model: str) -> InferencePrice | None:
        """The per-token price of the hosted model ``model`` (case-insensitive), None when the table has none.

        None means unknown, never free: callers show it as unknown.
        """
        for price in self.inference:
            if price.model.lower() == model.lower():
                return price
        return None

    def fine_tuning_price(self, model: str) -> CloudPrice | None:
        """The per-training-token price of fine-tuning ``model`` (a dated snapshot name matches its family), or None."""
        lowered = model.lower()
        matches = [p for p in self.cloud_fine_tuning if lowered == p.model.lower() or lowered.startswith(p.model.lower() + "-")]
        return max(matches, key=lambda p: len(p.model)) if matches else None

    def gpu(self, name: str) -> GPUSpec:
        """The GPU named ``name`` (case-insensitive).

        Raises:
            ConfigError: naming the GPUs the table has.
        """
        for gpu in self.gpus:
            if gpu.name.lower() == name.lower():
                return gpu
        raise ConfigError(
            f"budget.gpu: unknown GPU '{name}'", f"use one of {', '.join(g.name for g in self.gpus)} or add it to the price table"
        )


def load_price_table(path: str | Path | None = None) -> PriceTable:
    """Read the GPU and cloud price table (the bundled ``resources/prices.yaml`` by default).

    Raises:
        ConfigError: when the file is missing or its entries lack fields.
    """
    try:
        if path is None:
            text = resources.files("tunelab").joinpath("resources/prices.yaml").read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        return PriceTable(
            table_date=str(data.get("table_date", "unknown")),
            gpus=[GPUSpec(**entry) for entry in data.get("gpus", [])],
            cloud_fine_tuning=[CloudPrice(**entry) for entry in data.get("cloud_fine_tuning", [])],
            inference=[InferencePrice(**entry) for entry in data.get("inference", [])],
        )
    except OSError as error:
        raise ConfigError(f"cannot read the price table {path}: {error.strerror}") from None
    except (TypeError, yaml.YAMLError) as error:
        raise ConfigError(f"price table {path or 'prices.yaml'} is malformed: {error}") from None
