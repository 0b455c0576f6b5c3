"""The dated table of GPUs (bf16 TFLOPs, memory, $/hour) and hosted fine-tuning prices (``resources/prices.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass
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
class PriceTable:
    table_date: str
    gpus: list[GPUSpec]
    cloud_fine_tuning: list[CloudPrice]

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
        )
    except OSError as error:
        raise ConfigError(f"cannot read the price table {path}: {error.strerror}") from None
    except (TypeError, yaml.YAMLError) as error:
        raise ConfigError(f"price table {path or 'prices.yaml'} is malformed: {error}") from None
