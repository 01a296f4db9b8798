"""lxcone-exporter: Prometheus metrics for the system containers of one LXCoNe host.

One custom collector (:class:`CgroupCollector`) reads the runtime's run dir, the containers'
cgroups and their guest-view /proc/<init>/net/dev when Prometheus scrapes; ``lxcone-exporter``
(:mod:`exporter.server`) serves it over HTTP. The metric set is in :mod:`exporter.metrics`;
docs/exporter.md documents it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lxcone")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from exporter.collector import CgroupCollector

__all__ = ["CgroupCollector", "__version__"]
