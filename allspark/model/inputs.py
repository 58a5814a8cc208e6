"""Named, shaped model inputs: what each modality expects, and checks that say so when it is wrong.

Every encoder declares its inputs as :class:`TensorSpec` entries with *named* dimensions. A
dimension name shared by two inputs (``bands`` in an image and in its wavelengths) must have the
same size in both, so a band count that does not match the wavelengths is caught here, with a
message naming the modality, the input and the expected form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from allspark.errors import InputError

DType = Literal["float", "int", "bool"]


class ModalityInputError(InputError):
    """An input does not have the form its modality expects."""

    def __init__(self, modality: str, message: str, expected: str) -> None:
        super().__init__(f"{modality} input: {message}; expected {expected}")
        self.modality = modality


@dataclass(frozen=True)
class TensorSpec:
    """One named input tensor.

    Attributes:
        name: key in the input mapping.
        dims: dimension names in order; an ``int`` fixes that dimension's size.
        dtype: ``float`` (any floating type), ``int`` (any integer type) or ``bool``.
        description: what the values are, in a few words.
        optional: may be left out.
        allow_nan: NaN allowed (e.g. missing table cells handled by the encoder).
        min_sizes: smallest size per dimension name (an empty sequence is never allowed).
    """

    name: str
    dims: tuple[str | int, ...]
    dtype: DType = "float"
    description: str = ""
    optional: bool = False
    allow_nan: bool = False
    min_sizes: tuple[tuple[str, int], ...] = ()

    def form(self) -> str:
        """Human-readable form, e.g. ``image (batch, bands, height, width) float``."""
        return f"{self.name} ({', '.join(str(d) for d in self.dims)}) {self.dtype}"

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "dims": list(self.dims),
            "dtype": self.dtype,
            "description": self.description,
            "optional": self.optional,
        }


@dataclass(frozen=True)
class InputSpec:
    """All inputs of one modality."""

    tensors: tuple[TensorSpec, ...]

    def form(self) -> str:
        return "; ".join(t.form() for t in self.tensors)

    def as_list(self) -> list[dict]:
        return [t.as_dict() for t in self.tensors]

    def names(self) -> list[str]:
        return [t.name for t in self.tensors]


_DTYPE_CHECKS = {
    "float": torch.Tensor.is_floating_point,
    "int": lambda t: not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool,
    "bool": lambda t: t.dtype == torch.bool,
}


def validate_inputs(modality: str, spec: InputSpec, inputs: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Check ``inputs`` against ``spec``; return the size of every named dimension.

    Raises:
        ModalityInputError: a missing or unknown input, a wrong rank, dtype or fixed size, an
            empty dimension, sizes of a shared dimension name that disagree, or NaN/inf values.
    """
    expected = spec.form()
    if not isinstance(inputs, Mapping):
        raise ModalityInputError(modality, f"got {type(inputs).__name__}, not a mapping of named tensors", expected)
    unknown = sorted(set(inputs) - set(spec.names()))
    if unknown:
        raise ModalityInputError(modality, f"unknown input(s) {unknown}", expected)
    sizes: dict[str, tuple[int, str]] = {}
    for tensor_spec in spec.tensors:
        name = tensor_spec.name
        if name not in inputs or inputs[name] is None:
            if tensor_spec.optional:
                continue
            raise ModalityInputError(modality, f"missing input {name!r}", expected)
        value = inputs[name]
        if not isinstance(value, torch.Tensor):
            raise ModalityInputError(modality, f"{name!r} is a {type(value).__name__}, not a torch.Tensor", expected)
        if value.ndim != len(tensor_spec.dims):
            raise ModalityInputError(
                modality, f"{name!r} has rank {value.ndim} (shape {tuple(value.shape)})", tensor_spec.form()
            )
        if not _DTYPE_CHECKS[tensor_spec.dtype](value):
            raise ModalityInputError(modality, f"{name!r} has dtype {value.dtype}", tensor_spec.form())
        minimum = dict(tensor_spec.min_sizes)
        for dim, size in zip(tensor_spec.dims, value.shape):
            if isinstance(dim, int):
                if size != dim:
                    raise ModalityInputError(
                        modality, f"{name!r} has shape {tuple(value.shape)}", tensor_spec.form()
                    )
                continue
            if size < minimum.get(dim, 1):
                raise ModalityInputError(
                    modality,
                    f"{name!r} has {size} along {dim!r} (shape {tuple(value.shape)}), at least "
                    f"{minimum.get(dim, 1)} needed",
                    tensor_spec.form(),
                )
            if dim in sizes and sizes[dim][0] != size:
                first_size, first_name = sizes[dim]
                raise ModalityInputError(
                    modality,
                    f"{name!r} has {size} along {dim!r} but {first_name!r} has {first_size}",
                    expected,
                )
            sizes.setdefault(dim, (size, name))
        if value.is_floating_point() and not tensor_spec.allow_nan and not torch.isfinite(value).all():
            raise ModalityInputError(modality, f"{name!r} contains NaN or infinite values", tensor_spec.form())
    return {dim: size for dim, (size, _) in sizes.items()}
