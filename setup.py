"""Package layout only; all metadata lives in pyproject.toml.

The stages sit in top-level folders (training/, export/, calibration/, runtime/) but install
under the `meanloc` namespace, so `import meanloc.runtime` never collides with another
project's `runtime` or `export`. setuptools cannot discover mapped folders from pyproject
alone, hence this file.
"""

from setuptools import find_packages, setup

STAGES = ("training", "export", "calibration", "runtime")

package_dir = {"meanloc": "meanloc"}
packages = ["meanloc", *(f"meanloc.{p}" for p in find_packages("meanloc"))]
for stage in STAGES:
    package_dir[f"meanloc.{stage}"] = stage
    packages += [f"meanloc.{stage}", *(f"meanloc.{stage}.{p}" for p in find_packages(stage))]

setup(packages=packages, package_dir=package_dir)
