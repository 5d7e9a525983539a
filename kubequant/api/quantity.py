"""Kubernetes resource quantities and container resource names, checked as the API server checks a pod.

A Job or StatefulSet built from a spec with ``nvidia.com/gpu: "-1"`` would be refused only when the
operator creates it; these functions let ``kubequant validate`` refuse it first, with the same rules
as ``ValidateContainerResourceRequirements`` (k8s.io/kubernetes pkg/apis/core/validation): quantities
are not negative, extended resources (``vendor.example/thing``) are whole numbers and cannot be
overcommitted (requests equal limits, limits set), requests do not exceed limits, names are cpu,
memory, ephemeral-storage, hugepages-<size> or domain-qualified. The CEL twins of these rules
(``kubequant.api.common.ResourceRequirements``) use the API server's own ``quantity()`` library.
"""

from __future__ import annotations

import re
from decimal import Decimal, localcontext

# The grammar of k8s.io/apimachinery's resource.Quantity (sign, number, one suffix).
QUANTITY_PATTERN = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
_QUANTITY = re.compile(QUANTITY_PATTERN)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

STANDARD_CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")
HUGEPAGES_PREFIX = "hugepages-"
# A qualified name with a DNS-subdomain prefix: what a vendor's resource is called (nvidia.com/gpu).
QUALIFIED_RESOURCE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
_QUALIFIED = re.compile(QUALIFIED_RESOURCE_PATTERN)


def parse_quantity(value: int | str, where: str = "quantity") -> Decimal:
    """A Kubernetes quantity ("500m", "4Gi", 2, "1e3") as an exact Decimal; ValueError if it is not one."""
    text = value.strip() if isinstance(value, str) else str(value)
    if isinstance(value, bool) or not _QUANTITY.match(text):
        raise ValueError(f"{where}: {value!r} is not a Kubernetes quantity such as 500m, 2, 4Gi")
    number = text.rstrip("KMGTPEinumk")  # exponent forms (1e3) stay whole: no suffix letter is 'e'
    suffix = text[len(number) :]
    try:
        base = Decimal(number)  # exact: the constructor does not round
        if suffix in _BINARY:
            with localcontext() as ctx:
                ctx.prec = len(base.as_tuple().digits) + 20  # every digit of n * 2**60
                return base * _BINARY[suffix]
        sign, digits, exponent = base.as_tuple()
        return Decimal((sign, digits, int(exponent) + _DECIMAL[suffix]))  # a shift by 10**k, exact
    except ArithmeticError as err:  # an exponent past what Decimal multiplies (1e999999999Ki)
        raise ValueError(f"{where}: {value!r} is not a Kubernetes quantity such as 500m, 2, 4Gi") from err


def quantity_or_none(value: int | str) -> Decimal | None:
    """The quantity's value, or None when it is not one (its own field reports that)."""
    try:
        return parse_quantity(value)
    except ValueError:
        return None


def is_hugepages(name: str) -> bool:
    """Whether ``name`` is a huge page resource (hugepages-2Mi)."""
    return name.startswith(HUGEPAGES_PREFIX)


def is_extended(name: str) -> bool:
    """A resource outside kubernetes.io that a device plugin or the scheduler counts: nvidia.com/gpu."""
    return "/" in name and "kubernetes.io/" not in name


def overcommit_allowed(name: str) -> bool:
    """Whether requests may be below limits (cpu, memory); not for extended resources or huge pages."""
    return not is_extended(name) and not is_hugepages(name)


def valid_container_resource_name(name: str) -> bool:
    """cpu, memory, ephemeral-storage, hugepages-<size>, or a domain-qualified name (not ``requests.*``)."""
    if "/" not in name:
        return name in STANDARD_CONTAINER_RESOURCES or is_hugepages(name)
    prefix, _, short = name.partition("/")
    return (
        bool(_QUALIFIED.match(name))
        and len(prefix) <= 253
        and len(short) <= 63
        and not (is_extended(name) and name.startswith("requests."))
    )
