"""Settings dataclasses that travel as JSON next to every artefact: one ``to_dict`` / ``from_dict`` for all."""

from __future__ import annotations

import dataclasses


class Settings:
    """Mixin of a frozen dataclass of settings: ``to_dict`` for JSON, ``from_dict`` refusing unknown fields (JSON
    lists come back as tuples)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in d.items()})
