"""Maps the product's top-level folders into the one ``kubequant`` import package.

``operator/`` and ``workloads/`` are top-level folders for people; for Python they are
``kubequant.operator`` and ``kubequant.workloads``. ``operator/`` has no ``__init__.py`` on
purpose: a top-level package named ``operator`` would shadow the standard library. So
``kubequant.operator`` is a namespace package, and so is ``kubequant`` itself: setuptools'
editable finder resolves a namespace package mapped to another folder only under a namespace
parent.
"""

from setuptools import find_namespace_packages, setup

MAPPED = {"kubequant.operator": "operator", "kubequant.workloads": "workloads"}


def _packages() -> list[str]:
    found = find_namespace_packages(include=["kubequant", "kubequant.*"])
    for name, folder in MAPPED.items():
        found.append(name)
        found += [f"{name}.{sub}" for sub in find_namespace_packages(where=folder, exclude=["*__pycache__*"])]
    return sorted(set(found))


setup(
    packages=_packages(),
    package_dir={"kubequant": "kubequant", **MAPPED},
    package_data={"kubequant": ["py.typed"]},
)
