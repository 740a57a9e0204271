"""pgx_lab: policy-gradient estimators in JAX, composable and exact."""

import setuptools

setuptools.setup(
    name="pgx_lab",
    version="0.1.0",
    description="A JAX library of policy-gradient estimators, each reproduced on a toy problem.",
    packages=setuptools.find_packages(include=["pgx_lab", "pgx_lab.*", "experiments", "experiments.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.7.0",
        "flax>=0.11.0",
        "optax>=0.2.5",
        "chex>=0.1.90",
        "orbax-checkpoint>=0.11.0",
        "tensorflow-datasets>=4.9.8",
        "absl-py>=2.1.0",
        "ml-collections>=1.0.0",
        "tqdm>=4.66",
        "matplotlib>=3.8",
        "gymnax>=1.0.0",
        "mctx>=0.0.5",
        "tensorboardX>=2.6",
        "numpy>=1.26",
    ],
    extras_require={
        "test": [
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            "hypothesis>=6.100",
            "nbmake>=1.5",
            "ipykernel>=6.29",
            "rlax>=0.1.8",
        ],
    },
)
