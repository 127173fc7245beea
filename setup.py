"""Package layout that pyproject.toml cannot express: ``conf/`` (kept at the top of the repository)
is shipped inside the wheel as the data-only package ``famlab.conf``, so a non-editable install
(``pip install .``, ``pip install git+<url>``) has its config tree. Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

setup(
    packages=[*find_packages("src"), "famlab.conf"],
    package_dir={"": "src", "famlab.conf": "conf"},
    package_data={"famlab": ["py.typed"], "famlab.conf": ["*.yaml", "**/*.yaml", "local/.gitkeep", "local/*.txt"]},
    exclude_package_data={"famlab.conf": ["local/*.yaml"]},  # a user's own conf/local/default.yaml stays home
    include_package_data=False,
)
